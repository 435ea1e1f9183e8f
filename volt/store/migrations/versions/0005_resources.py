"""Durable resources with a lifecycle (Forge leases first) and their
transition history; an org's GPU quota.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", sa.String(40), primary_key=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False, index=True),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("spec", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
    )
    op.create_index("ix_resources_kind_org_created", "resources",
                    ["kind", "org_id", "created_at"])
    op.create_index("ix_resources_kind_state", "resources", ["kind", "state"])
    op.create_table(
        "resource_events",
        sa.Column("resource_id", sa.String(40), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(32), nullable=False),
        sa.Column("to_state", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    with op.batch_alter_table("orgs") as batch:
        batch.add_column(sa.Column("gpu_quota", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orgs") as batch:
        batch.drop_column("gpu_quota")
    op.drop_table("resource_events")
    op.drop_index("ix_resources_kind_state", "resources")
    op.drop_index("ix_resources_kind_org_created", "resources")
    op.drop_table("resources")
