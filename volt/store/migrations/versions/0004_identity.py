"""Identity: orgs (were tenants), keyed-hash API keys with scopes, roles and
expiry, users and members, the OAuth device grant and refresh tokens, console
sessions, and the audit log's Merkle tree.

Keys issued before this revision were stored as plain SHA-256 digests of a
format without a checksum; they cannot be verified under the new scheme and
are removed (``volt up`` re-issues its development key).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def _created() -> sa.Column[object]:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                     nullable=False)


def upgrade() -> None:
    op.execute("DELETE FROM api_keys")
    op.rename_table("tenants", "orgs")
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("spiffe_id")  # derived from the trust domain, never stored
    op.drop_table("api_keys")
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), nullable=False, index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("mode", sa.String(8), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("hash", sa.String(64), nullable=False),
        sa.Column("prefix", sa.String(40), nullable=False),
        _created(),
        sa.Column("created_by", sa.String(300), nullable=False, server_default=""),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rpm_limit", sa.Integer(), nullable=True),
        sa.Column("tpm_limit", sa.Integer(), nullable=True),
    )
    with op.batch_alter_table("usage_records") as batch:
        batch.alter_column("tenant_id", new_column_name="org_id")
        batch.add_column(sa.Column("spiffe_id", sa.String(300), nullable=False,
                                   server_default=""))
        batch.add_column(sa.Column("livemode", sa.Boolean(), nullable=False,
                                   server_default=sa.true()))
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_index("ix_usage_tenant_day")
        batch.create_index("ix_usage_org_day", ["org_id", "day"])

    op.create_table(
        "users",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("issuer", sa.String(300), nullable=False),
        sa.Column("subject", sa.String(300), nullable=False),
        sa.Column("email", sa.String(300), nullable=False, server_default=""),
        _created(),
        sa.UniqueConstraint("issuer", "subject"),
    )
    op.create_table(
        "members",
        sa.Column("org_id", sa.String(40), sa.ForeignKey("orgs.id"), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), primary_key=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(),
                  nullable=False),
    )
    op.create_table(
        "device_grants",
        sa.Column("device_code_hash", sa.String(64), primary_key=True),
        sa.Column("user_code", sa.String(16), nullable=False, unique=True),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=True),
        sa.Column("user_id", sa.String(40), nullable=True),
        sa.Column("interval_s", sa.Integer(), nullable=False),
        sa.Column("last_poll_unix", sa.Float(), nullable=True),
        sa.Column("expires_unix", sa.Float(), nullable=False),
        sa.Column("created_unix", sa.Float(), nullable=False),
    )
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("family_id", sa.String(40), nullable=False, index=True),
        sa.Column("client_id", sa.String(100), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("user_id", sa.String(40), nullable=False),
        sa.Column("scopes", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_unix", sa.Float(), nullable=False),
        sa.Column("expires_unix", sa.Float(), nullable=False),
    )
    op.create_table(
        "revoked_token_families",
        sa.Column("family_id", sa.String(40), primary_key=True),
        sa.Column("revoked_unix", sa.Float(), nullable=False),
        sa.Column("expires_unix", sa.Float(), nullable=False),
    )
    op.create_table(
        "oidc_logins",
        sa.Column("state_hash", sa.String(64), primary_key=True),
        sa.Column("issuer_name", sa.String(100), nullable=False),
        sa.Column("nonce", sa.String(100), nullable=False),
        sa.Column("code_verifier", sa.String(200), nullable=False),
        sa.Column("return_to", sa.String(500), nullable=False),
        sa.Column("expires_unix", sa.Float(), nullable=False),
    )
    op.create_table(
        "console_sessions",
        sa.Column("id_hash", sa.String(64), primary_key=True),
        sa.Column("user_id", sa.String(40), sa.ForeignKey("users.id"), nullable=False),
        sa.Column("issuer_name", sa.String(100), nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_unix", sa.Float(), nullable=False),
        sa.Column("expires_unix", sa.Float(), nullable=False),
    )

    op.create_table(
        "audit_events",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event_id", sa.String(40), nullable=False, unique=True),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("time_unix", sa.Float(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Index("ix_audit_org_seq", "org_id", "seq"),
    )
    op.create_table(
        "audit_nodes",
        sa.Column("level", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("position", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("hash", sa.LargeBinary(32), nullable=False),
    )
    op.create_table(
        "audit_checkpoints",
        sa.Column("tree_size", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("root_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("time_ms", sa.BigInteger(), nullable=False),
        sa.Column("key_id", sa.String(64), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
    )
    op.create_table(
        "signing_keys",
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("purpose", sa.String(32), nullable=False),
        sa.Column("public_key", sa.LargeBinary(32), nullable=False),
        _created(),
    )


def downgrade() -> None:
    for table in ("signing_keys", "audit_checkpoints", "audit_nodes", "audit_events",
                  "console_sessions", "oidc_logins", "revoked_token_families",
                  "refresh_tokens", "device_grants", "members", "users"):
        op.drop_table(table)
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_index("ix_usage_org_day")
        batch.drop_column("livemode")
        batch.drop_column("spiffe_id")
        batch.alter_column("org_id", new_column_name="tenant_id")
        batch.create_index("ix_usage_tenant_day", ["tenant_id", "day"])
    op.drop_table("api_keys")
    op.rename_table("orgs", "tenants")
    with op.batch_alter_table("tenants") as batch:
        batch.add_column(sa.Column("spiffe_id", sa.String(300), nullable=True))
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("tenant_id", sa.String(40), sa.ForeignKey("tenants.id"), nullable=False,
                  index=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(32), nullable=False),
        sa.Column("digest", sa.String(64), nullable=False, unique=True),
        _created(),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
    )
