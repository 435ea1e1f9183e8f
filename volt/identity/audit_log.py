"""The audit log in the store: an append-only RFC 9162 Merkle tree with
signed checkpoints, as Certificate Transparency logs keep theirs.

Each event's msgpack encoding is a leaf (``audit_events.body``); the hashes of
complete subtrees are stored as they complete (``audit_nodes``), so any root,
inclusion proof or consistency proof needs O(log n) rows and one query.
Checkpoints (signed tree heads) are Ed25519 signatures over::

    volt-audit-log/v1
    <tree size>
    <root hash, base64>
    <time, ms since the epoch>

One writer appends (the scheduler, ``AuditWriter``); any API replica reads.
An edited, deleted or reordered event no longer hashes to the checkpointed
root, and a rewritten history is not consistent with an earlier checkpoint
(``volt audit verify``, ``verify.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import func, select, tuple_

from volt.identity import merkle
from volt.identity.audit_format import (
    Checkpoint,
    checkpoint_text,
    decode_leaf,
    leaf_bytes,
    public_key_id,
)
from volt.identity.tables import AuditCheckpoint, AuditEventRow, AuditNode, SigningKey
from volt.store.database import Database
from volt.wire import AuditEvent

T = TypeVar("T")
PURPOSE = "audit-checkpoint"


@dataclass(frozen=True, slots=True)
class StoredEvent:
    seq: int
    event: AuditEvent
    body: bytes


def _collect(compute: Callable[[merkle.NodeHash], T]) -> set[tuple[int, int]]:
    """The nodes ``compute`` reads. The tree algorithms never branch on hash
    values, so a dry run with placeholder hashes names exactly what to fetch."""
    wanted: set[tuple[int, int]] = set()

    def record(level: int, position: int) -> bytes:
        wanted.add((level, position))
        return b"\0" * 32

    compute(record)
    return wanted


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- reading -----------------------------------------------------------------

    async def size(self) -> int:
        async with self.db.session() as session:
            return int(await session.scalar(select(func.count()).select_from(AuditEventRow))
                       or 0)

    async def _nodes(self, wanted: set[tuple[int, int]]) -> dict[tuple[int, int], bytes]:
        found: dict[tuple[int, int], bytes] = {}
        pending = sorted(wanted)
        async with self.db.session() as session:
            for start in range(0, len(pending), 500):
                chunk = pending[start: start + 500]
                rows = await session.execute(
                    select(AuditNode.level, AuditNode.position, AuditNode.hash)
                    .where(tuple_(AuditNode.level, AuditNode.position).in_(chunk)))
                found.update({(level, position): value for level, position, value in rows})
        missing = wanted - found.keys()
        if missing:
            raise LookupError(f"the audit log lacks tree nodes {sorted(missing)[:3]}")
        return found

    async def compute(self, compute: Callable[[merkle.NodeHash], T]) -> T:
        """Run a tree computation against the stored nodes, fetched in one go."""
        nodes = await self._nodes(_collect(compute))
        return compute(lambda level, position: nodes[(level, position)])

    async def root(self, size: int) -> bytes:
        return await self.compute(lambda nodes: merkle.root(nodes, size))

    async def inclusion_proofs(self, indexes: Sequence[int], size: int) -> list[list[bytes]]:
        return await self.compute(
            lambda nodes: [merkle.inclusion_proof(nodes, i, size) for i in indexes])

    async def consistency_proof(self, first: int, second: int) -> list[bytes]:
        return await self.compute(lambda nodes: merkle.consistency_proof(nodes, first, second))

    async def events(self, *, org_id: str | None, after_seq: int = -1, limit: int = 100,
                     until_seq: int | None = None) -> list[StoredEvent]:
        """Events in log order after ``after_seq``; ``org_id`` None: every org's."""
        statement = select(AuditEventRow.seq, AuditEventRow.body).where(
            AuditEventRow.seq > after_seq)
        if org_id is not None:
            statement = statement.where(AuditEventRow.org_id == org_id)
        if until_seq is not None:
            statement = statement.where(AuditEventRow.seq < until_seq)
        statement = statement.order_by(AuditEventRow.seq).limit(limit)
        async with self.db.session() as session:
            rows = (await session.execute(statement)).all()
        return [StoredEvent(seq, decode_leaf(body), body) for seq, body in rows]

    async def search(self, *, org_id: str, after_seq: int, limit: int,
                     match: Callable[[AuditEvent], bool], scan_limit: int = 5000,
                     ) -> tuple[list[StoredEvent], int | None, bool]:
        """Up to ``limit`` of the org's events after ``after_seq`` that ``match``,
        looking at no more than ``scan_limit``: (events, the last seq looked at
        — the next page's cursor —, whether there may be more)."""
        found: list[StoredEvent] = []
        cursor, scanned = after_seq, 0
        while len(found) < limit and scanned < scan_limit:
            batch = await self.events(org_id=org_id, after_seq=cursor, limit=500)
            if not batch:
                return found, (cursor if cursor != after_seq else None), False
            for stored in batch:
                cursor, scanned = stored.seq, scanned + 1
                if match(stored.event):
                    found.append(stored)
                    if len(found) == limit:
                        break
        more = bool(await self.events(org_id=org_id, after_seq=cursor, limit=1))
        return found, cursor, more

    async def latest_checkpoint(self) -> Checkpoint | None:
        async with self.db.session() as session:
            row = await session.scalar(
                select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size.desc()).limit(1))
        return None if row is None else Checkpoint(
            row.tree_size, row.root_hash, row.time_ms, row.key_id, row.signature)

    async def public_key(self, key_id: str) -> Ed25519PublicKey | None:
        async with self.db.session() as session:
            row = await session.get(SigningKey, key_id)
        return None if row is None else Ed25519PublicKey.from_public_bytes(row.public_key)

    # -- writing (the single writer only) -------------------------------------------

    async def frontier(self) -> merkle.Frontier:
        size = await self.size()
        return await self.compute(lambda nodes: merkle.Frontier.load(nodes, size))

    async def append(self, frontier: merkle.Frontier, events: Sequence[AuditEvent]) -> int:
        """Append the events not already in the log (a redelivered batch is
        absorbed); returns how many were new. ``frontier`` moves on only once
        the transaction committed."""
        if not events:
            return 0
        ids = [event.event_id for event in events]
        async with self.db.session() as session, session.begin():
            seen = set((await session.scalars(
                select(AuditEventRow.event_id).where(AuditEventRow.event_id.in_(ids)))).all())
            work = merkle.Frontier(frontier.size, frontier.edge)
            rows, nodes = [], []
            for event in events:
                if event.event_id in seen:
                    continue
                seen.add(event.event_id)
                body = leaf_bytes(event)
                rows.append({"seq": work.size, "event_id": event.event_id,
                             "org_id": event.org_id, "time_unix": event.time_ms / 1000,
                             "body": body})
                nodes += [{"level": level, "position": position, "hash": value}
                          for level, position, value in work.append(merkle.leaf_hash(body))]
            if rows:
                await session.execute(AuditEventRow.__table__.insert(), rows)  # type: ignore[attr-defined]
                await session.execute(AuditNode.__table__.insert(), nodes)  # type: ignore[attr-defined]
        frontier.size, frontier.edge = work.size, work.edge
        return len(rows)

    async def sign_checkpoint(self, frontier: merkle.Frontier,
                              key: Ed25519PrivateKey) -> Checkpoint:
        public = key.public_key()
        key_id = public_key_id(public)
        time_ms = int(time.time() * 1000)
        root_hash = frontier.root()
        signature = key.sign(checkpoint_text(frontier.size, root_hash, time_ms))
        async with self.db.session() as session, session.begin():
            if await session.get(SigningKey, key_id) is None:
                raw = public.public_bytes(serialization.Encoding.Raw,
                                          serialization.PublicFormat.Raw)
                session.add(SigningKey(key_id=key_id, purpose=PURPOSE, public_key=raw))
            if await session.get(AuditCheckpoint, frontier.size) is None:
                session.add(AuditCheckpoint(tree_size=frontier.size, root_hash=root_hash,
                                            time_ms=time_ms, key_id=key_id,
                                            signature=signature))
        return Checkpoint(frontier.size, root_hash, time_ms, key_id, signature)
