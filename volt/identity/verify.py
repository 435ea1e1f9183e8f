"""The operator's check of the whole audit log, straight from the store.

Rebuilds the Merkle tree from the stored events alone (not from the stored
node hashes, which an editor could have rewritten too), then checks that the
events are numbered 0..n-1 without a gap and that every signed checkpoint's
root is the root of the rebuilt tree at its size, with a valid signature by a
key the operator trusts (the keyring's), not one the store names. An
edited, deleted or reordered event, and a forged or re-signed checkpoint,
each fail one of these. ``volt audit verify --store`` runs it; the benchmark
times it on a million events.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select

from volt.identity import merkle
from volt.identity.audit_format import Checkpoint, public_key_id, signature_valid
from volt.identity.tables import AuditCheckpoint, AuditEventRow
from volt.store.database import Database

BATCH = 20_000


@dataclass
class StoreReport:
    events: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def verify_store(db: Database, *, trusted: list[Ed25519PublicKey]) -> StoreReport:
    """Check the log in ``db``; checkpoints count only if signed by a ``trusted``
    key (the keyring's: a key row in the store proves nothing to someone who
    could write the store)."""
    report = StoreReport()
    async with db.session() as session:
        rows = (await session.scalars(
            select(AuditCheckpoint).order_by(AuditCheckpoint.tree_size))).all()
    checkpoints = [Checkpoint(r.tree_size, r.root_hash, r.time_ms, r.key_id, r.signature)
                   for r in rows]
    keys = {public_key_id(key): key for key in trusted}
    pending = list(checkpoints)
    frontier = merkle.Frontier()
    last_seq = -1
    while True:
        async with db.session() as session:
            batch = (await session.execute(
                select(AuditEventRow.seq, AuditEventRow.body)
                .where(AuditEventRow.seq > last_seq).order_by(AuditEventRow.seq)
                .limit(BATCH))).all()
        for seq, body in batch:
            if seq != frontier.size:
                report.problems.append(f"event {frontier.size} is missing (the next is {seq})")
                return report
            frontier.append(merkle.leaf_hash(body))
            while pending and pending[0].tree_size == frontier.size:
                _check(pending.pop(0), frontier.root(), keys, report)
            last_seq = seq
        if len(batch) < BATCH:
            break
    report.events = frontier.size
    for checkpoint in pending:
        report.problems.append(f"checkpoint of {checkpoint.tree_size} events, but the log "
                               f"holds {frontier.size}: events are missing")
    return report


def _check(checkpoint: Checkpoint, root: bytes, keys: Mapping[str, Ed25519PublicKey | None],
           report: StoreReport) -> None:
    report.checkpoints += 1
    key = keys.get(checkpoint.key_id)
    if key is None or not signature_valid(checkpoint, key):
        report.problems.append(f"checkpoint {checkpoint.tree_size}: bad signature")
    if root != checkpoint.root_hash:
        report.problems.append(f"checkpoint {checkpoint.tree_size}: the events no longer hash "
                               "to its root (an event was edited, removed or reordered)")
