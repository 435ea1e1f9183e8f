"""Usage records: one row per request, token counts only.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("tenant_id", sa.String(40), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("endpoint", sa.String(40), nullable=False),
        sa.Column("metro", sa.String(64), nullable=False),
        sa.Column("tier", sa.String(64), nullable=False),
        sa.Column("pod", sa.String(100), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("prompt_tokens", sa.Integer(), nullable=False),
        sa.Column("completion_tokens", sa.Integer(), nullable=False),
        sa.Column("cached_tokens", sa.Integer(), nullable=False),
        sa.Column("started_unix", sa.Float(), nullable=False),
        sa.Column("ended_unix", sa.Float(), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
    )
    op.create_index("ix_usage_tenant_day", "usage_records", ["tenant_id", "day"])
    op.create_index("ix_usage_records_ended_unix", "usage_records", ["ended_unix"])


def downgrade() -> None:
    op.drop_index("ix_usage_records_ended_unix", "usage_records")
    op.drop_index("ix_usage_tenant_day", "usage_records")
    op.drop_table("usage_records")
