"""Usage records in the store, and the tenant-facing summary of them.

Records are inserted idempotently (the request id is the key), so the
scheduler can store a JetStream batch, crash before acknowledging, get the
batch again and still count every request exactly once.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from sqlalchemy import func, select
from sqlalchemy.dialects import postgresql, sqlite

from volt.store.database import Database
from volt.store.schema import UsageRow
from volt.wire import UsageRecord

GroupBy = Literal["model", "day", "metro", "tier", "key"]
GROUPS: dict[str, Any] = {
    "model": UsageRow.model, "day": UsageRow.day, "metro": UsageRow.metro,
    "tier": UsageRow.tier, "key": UsageRow.key_id,
}
BILLED = ("completed", "cancelled")
"""Failed attempts (the pod died before the client got anything) are not billed."""


@dataclass(frozen=True, slots=True)
class UsageBucket:
    group: dict[str, str]
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int


def _row(record: UsageRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id, "org_id": record.tenant_id,
        "spiffe_id": record.spiffe_id, "livemode": record.livemode,
        "key_id": record.key_id, "model": record.model, "endpoint": record.endpoint,
        "metro": record.metro, "tier": record.tier, "pod": record.pod, "stream": record.stream,
        "status": record.status, "prompt_tokens": record.prompt_tokens,
        "completion_tokens": record.completion_tokens, "cached_tokens": record.cached_tokens,
        "started_unix": record.started_unix, "ended_unix": record.ended_unix,
        "day": time.strftime("%Y-%m-%d", time.gmtime(record.ended_unix)),
    }


class UsageLedger:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def record(self, records: Sequence[UsageRecord]) -> None:
        """Store records; ones already stored are left as they are."""
        if not records:
            return
        dialect = self.db.engine.dialect.name
        insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        # The Core table with a parameter list: SQLAlchemy batches it
        # ("insertmanyvalues"). Multi-row .values() on the ORM entity coerced
        # every value through the ORM, ~200 us a row.
        statement = insert(UsageRow.__table__).on_conflict_do_nothing(  # type: ignore[arg-type]
            index_elements=["request_id"]
        )
        async with self.db.session() as session, session.begin():
            await session.execute(statement, [_row(r) for r in records])

    async def summary(
        self, org_id: str, *, start_unix: float, end_unix: float,
        group_by: Sequence[GroupBy] = (), livemode: bool = True,
    ) -> list[UsageBucket]:
        columns = [GROUPS[name].label(name) for name in group_by]
        statement = (
            select(
                *columns,
                func.count().label("requests"),
                func.coalesce(func.sum(UsageRow.prompt_tokens), 0),
                func.coalesce(func.sum(UsageRow.completion_tokens), 0),
                func.coalesce(func.sum(UsageRow.cached_tokens), 0),
            )
            .where(
                UsageRow.org_id == org_id,
                UsageRow.livemode == livemode,
                UsageRow.ended_unix >= start_unix,
                UsageRow.ended_unix < end_unix,
                UsageRow.status.in_(BILLED),
            )
            .group_by(*columns)
            .order_by(*columns)
        )
        async with self.db.session() as session:
            rows = (await session.execute(statement)).all()
        buckets = []
        for row in rows:
            values = tuple(row)
            group: dict[str, str] = {str(name): str(values[i]) for i, name in enumerate(group_by)}
            requests, prompt, completion, cached = values[len(group_by):]
            if requests:
                buckets.append(UsageBucket(group, int(requests), int(prompt), int(completion),
                                           int(cached)))
        return buckets
