"""A resource's log (a fine-tuning job's events) in rows of its own, appended,
instead of a list inside the resource's status that every event rewrote.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _resources() -> sa.TableClause:
    return sa.table("resources", sa.column("id", sa.String), sa.column("kind", sa.String),
                    sa.column("status", sa.Text))


def upgrade() -> None:
    log = op.create_table(
        "resource_log",
        sa.Column("resource_id", sa.String(40), primary_key=True),
        sa.Column("seq", sa.Integer(), primary_key=True),
        sa.Column("entry_id", sa.String(40), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("entry", sa.Text(), nullable=False),
    )
    op.create_index("ix_resource_log_entry", "resource_log", ["resource_id", "entry_id"],
                    unique=True)
    # Jobs made before this revision kept their events in their status: move them.
    bind = op.get_bind()
    resources = _resources()
    for row in bind.execute(sa.select(resources.c.id, resources.c.status)
                            .where(resources.c.kind == "fine_tuning_job")).all():
        status = json.loads(row.status)
        events = status.pop("events", [])
        if events:
            op.bulk_insert(log, [{"resource_id": row.id, "seq": seq, "entry_id": e["id"],
                                  "at": float(e.get("created_at", 0)), "entry": json.dumps(e)}
                                 for seq, e in enumerate(events, start=1)])
        bind.execute(resources.update().where(resources.c.id == row.id)
                     .values(status=json.dumps(status)))


def downgrade() -> None:
    bind = op.get_bind()
    resources = _resources()
    log = sa.table("resource_log", sa.column("resource_id", sa.String),
                   sa.column("seq", sa.Integer), sa.column("entry", sa.Text))
    for row in bind.execute(sa.select(resources.c.id, resources.c.status)
                            .where(resources.c.kind == "fine_tuning_job")).all():
        entries = bind.execute(sa.select(log.c.entry).where(log.c.resource_id == row.id)
                               .order_by(log.c.seq)).scalars().all()
        status = {**json.loads(row.status), "events": [json.loads(e) for e in entries]}
        bind.execute(resources.update().where(resources.c.id == row.id)
                     .values(status=json.dumps(status)))
    op.drop_index("ix_resource_log_entry", "resource_log")
    op.drop_table("resource_log")
