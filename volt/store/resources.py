"""Durable resources in the store: the row, its transitions, its history.

``ResourceStore`` is the persistence half of a lifecycle (``volt/lifecycle.py``):
every change of state is a compare-and-set on the row's version plus one
history row, in one transaction, so a writer that died half-way left either
the old state or the new one, never a mix; a second writer (there should be
none) loses with ``StaleResource`` instead of overwriting.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select, update

from volt.store.database import Database, StoreError
from volt.store.schema import Resource, ResourceEvent, ResourceLogEntry


class StaleResource(StoreError):
    """The row changed since it was read (another writer, or a replay)."""


@dataclass(frozen=True, slots=True)
class ResourceRecord:
    id: str
    kind: str
    org_id: str
    state: str
    spec: dict[str, Any]
    status: dict[str, Any]
    reason: str
    created_at: float
    updated_at: float
    version: int


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    seq: int
    at: float
    event: str
    from_state: str
    to_state: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Page:
    records: list[ResourceRecord] = field(default_factory=list)
    has_more: bool = False


@dataclass
class LogPage:
    entries: list[dict[str, Any]] = field(default_factory=list)
    """Newest first."""
    has_more: bool = False


LogEntries = Sequence[dict[str, Any]]
"""Entries for a resource's log: JSON objects, each with its own ``id``."""


async def _append_log(session: Any, resource_id: str, entries: LogEntries | None,
                      now: float) -> None:
    if not entries:
        return
    last = await session.scalar(
        select(func.coalesce(func.max(ResourceLogEntry.seq), 0))
        .where(ResourceLogEntry.resource_id == resource_id))
    for seq, entry in enumerate(entries, start=(last or 0) + 1):
        session.add(ResourceLogEntry(resource_id=resource_id, seq=seq, entry_id=entry["id"],
                                     at=now, entry=json.dumps(entry)))


def _record(row: Resource) -> ResourceRecord:
    return ResourceRecord(
        id=row.id, kind=row.kind, org_id=row.org_id, state=row.state,
        spec=json.loads(row.spec), status=json.loads(row.status), reason=row.reason,
        created_at=row.created_at, updated_at=row.updated_at, version=row.version)


class ResourceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, *, kind: str, id: str, org_id: str, state: str,
                     spec: dict[str, Any], status: dict[str, Any], now: float,
                     reason: str = "", log: LogEntries | None = None) -> ResourceRecord:
        async with self.db.session() as session, session.begin():
            session.add(Resource(id=id, kind=kind, org_id=org_id, state=state,
                                 spec=json.dumps(spec), status=json.dumps(status),
                                 reason=reason, created_at=now, updated_at=now, version=1))
            session.add(ResourceEvent(resource_id=id, seq=1, at=now, event="create",
                                      from_state="", to_state=state, reason=reason))
            await _append_log(session, id, log, now)
        return ResourceRecord(id=id, kind=kind, org_id=org_id, state=state, spec=spec,
                              status=status, reason=reason, created_at=now, updated_at=now,
                              version=1)

    async def transition(self, record: ResourceRecord, *, event: str, to: str, now: float,
                         reason: str = "", status: dict[str, Any] | None = None,
                         org_id: str | None = None,
                         log: LogEntries | None = None) -> ResourceRecord:
        """Move ``record`` to ``to`` (the lifecycle already said it may), with
        its new status (and with ``org_id``, a new holder: a rack changes hands
        between tenants) and ``log`` appended to its log; ``StaleResource`` if
        the row is not as read."""
        new_status = record.status if status is None else status
        new_org = record.org_id if org_id is None else org_id
        async with self.db.session() as session, session.begin():
            result = await session.execute(
                update(Resource)
                .where(Resource.id == record.id, Resource.version == record.version)
                .values(state=to, status=json.dumps(new_status), reason=reason,
                        org_id=new_org, updated_at=now, version=record.version + 1))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise StaleResource(f"{record.kind} {record.id} changed since it was read")
            seq = await session.scalar(
                select(func.coalesce(func.max(ResourceEvent.seq), 0))
                .where(ResourceEvent.resource_id == record.id))
            session.add(ResourceEvent(resource_id=record.id, seq=(seq or 0) + 1, at=now,
                                      event=event, from_state=record.state, to_state=to,
                                      reason=reason))
            await _append_log(session, record.id, log, now)
        return ResourceRecord(
            id=record.id, kind=record.kind, org_id=new_org, state=to, spec=record.spec,
            status=new_status, reason=reason, created_at=record.created_at, updated_at=now,
            version=record.version + 1)

    async def update_status(self, record: ResourceRecord, status: dict[str, Any],
                            now: float, log: LogEntries | None = None, *,
                            spec: dict[str, Any] | None = None) -> ResourceRecord:
        """A new status (and, rarely, a new ``spec``: what the resource is
        changed by its writer, as a BMC password Vault rotated)."""
        values: dict[str, Any] = {"status": json.dumps(status), "updated_at": now,
                                  "version": record.version + 1}
        if spec is not None:
            values["spec"] = json.dumps(spec)
        async with self.db.session() as session, session.begin():
            result = await session.execute(
                update(Resource)
                .where(Resource.id == record.id, Resource.version == record.version)
                .values(**values))
            if result.rowcount != 1:  # type: ignore[attr-defined]
                raise StaleResource(f"{record.kind} {record.id} changed since it was read")
            await _append_log(session, record.id, log, now)
        return ResourceRecord(
            id=record.id, kind=record.kind, org_id=record.org_id, state=record.state,
            spec=record.spec if spec is None else spec, status=status, reason=record.reason,
            created_at=record.created_at, updated_at=now, version=record.version + 1)

    async def get(self, kind: str, id: str, *, org_id: str | None = None
                  ) -> ResourceRecord | None:
        """The resource, or None; with ``org_id``, None unless it is that org's."""
        async with self.db.session() as session:
            row = await session.get(Resource, id)
        if row is None or row.kind != kind or (org_id is not None and row.org_id != org_id):
            return None
        return _record(row)

    async def page(self, kind: str, org_id: str, *, limit: int,
                   after: str | None = None, states: Iterable[str] | None = None) -> Page:
        """An org's resources, newest first; ``after``: the last id of the
        previous page."""
        query = select(Resource).where(Resource.kind == kind, Resource.org_id == org_id)
        if states is not None:
            query = query.where(Resource.state.in_(list(states)))
        async with self.db.session() as session:
            if after is not None:
                cursor = await session.get(Resource, after)
                if cursor is None or cursor.org_id != org_id or cursor.kind != kind:
                    raise KeyError(after)
                query = query.where(
                    (Resource.created_at < cursor.created_at)
                    | ((Resource.created_at == cursor.created_at) & (Resource.id < cursor.id)))
            rows = (await session.scalars(
                query.order_by(Resource.created_at.desc(), Resource.id.desc())
                .limit(limit + 1))).all()
        return Page(records=[_record(row) for row in rows[:limit]], has_more=len(rows) > limit)

    async def in_states(self, kind: str, states: Iterable[str]) -> list[ResourceRecord]:
        """Every resource of ``kind`` in one of ``states`` (what a writer
        resumes after a restart)."""
        async with self.db.session() as session:
            rows = (await session.scalars(
                select(Resource).where(Resource.kind == kind,
                                       Resource.state.in_(list(states))))).all()
        return [_record(row) for row in rows]

    async def created_before(self, kind: str, org_id: str, end: float
                             ) -> Sequence[ResourceRecord]:
        """An org's resources created before ``end`` (metering filters on its status)."""
        async with self.db.session() as session:
            rows = (await session.scalars(
                select(Resource).where(Resource.kind == kind, Resource.org_id == org_id,
                                       Resource.created_at < end))).all()
        return [_record(row) for row in rows]

    async def history(self, id: str) -> list[HistoryEntry]:
        async with self.db.session() as session:
            rows = (await session.scalars(
                select(ResourceEvent).where(ResourceEvent.resource_id == id)
                .order_by(ResourceEvent.seq))).all()
        return [HistoryEntry(seq=r.seq, at=r.at, event=r.event, from_state=r.from_state,
                             to_state=r.to_state, reason=r.reason) for r in rows]

    async def log(self, id: str, *, limit: int, after: str | None = None) -> LogPage:
        """A resource's log, newest first; ``after``: the last entry id of the
        previous page (``KeyError`` if it is not one of this resource's)."""
        query = select(ResourceLogEntry).where(ResourceLogEntry.resource_id == id)
        async with self.db.session() as session:
            if after is not None:
                cursor = await session.scalar(
                    select(ResourceLogEntry.seq).where(ResourceLogEntry.resource_id == id,
                                                       ResourceLogEntry.entry_id == after))
                if cursor is None:
                    raise KeyError(after)
                query = query.where(ResourceLogEntry.seq < cursor)
            rows = (await session.scalars(
                query.order_by(ResourceLogEntry.seq.desc()).limit(limit + 1))).all()
        return LogPage(entries=[json.loads(row.entry) for row in rows[:limit]],
                       has_more=len(rows) > limit)
