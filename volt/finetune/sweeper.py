"""The blobs nobody owns any more, deleted: training data and adapters do not
outlive what they belong to.

A blob's name says its owner (``file/<file>``, ``adapter/<job>``,
``checkpoint/<job>/step-<n>``), and the owner's record says whether it is
still wanted: a processed file's data, a live job's adapter and kept
checkpoints, a succeeded job's adapter and kept checkpoints until its model is
deleted. Everything else goes — a deleted file whose API replica died before
the purge, the checkpoints of a failed or cancelled job, a deleted model's
adapter where the blob store was away when it was deleted. A blob whose owner
has no record yet is only deleted once it is ``blob_grace_s`` old: an upload
and a checkpoint are written before the record that names them.

The sweeper reads names and ages, never contents: it runs in the scheduler,
which has no key to open a blob.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from volt.finetune.blobs import BlobBuckets, BlobUnavailable, owner_of
from volt.finetune.jobs import FILE_DELETED, FILE_KIND, FILE_PROCESSED, JOB_KIND, kept_checkpoints
from volt.finetune.states import LIVE, JobState
from volt.store.resources import ResourceRecord, ResourceStore

log = logging.getLogger(__name__)


def wanted(parsed: tuple[str, str, int | None] | None,
           owner: ResourceRecord | None) -> bool | None:
    """Of a blob whose name ``owner_of`` read as ``parsed``: True, keep it;
    False, delete it; None, decide by its age (its owner has no record yet, or
    it is a live job's checkpoint not reported yet)."""
    if parsed is None:
        return True
    kind, _, step = parsed
    if owner is None:
        return None
    if kind == "file":
        return bool(owner.state == FILE_PROCESSED)
    state = JobState(owner.state)
    if state is JobState.FAILED or state is JobState.CANCELLED:
        return False
    if step is None:
        return state in LIVE or not owner.status.get("model_deleted")
    if step in {int(c["step_number"]) for c in kept_checkpoints(owner)}:
        return True
    return None if state in LIVE else False


class BlobSweeper:
    def __init__(self, store: ResourceStore, buckets: BlobBuckets, *, grace_s: float,
                 metros: Callable[[], set[str]] = set,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.buckets = buckets
        self.grace_s = grace_s
        self.metros = metros
        """Metros that may hold blobs beyond those the records name (the fleet's)."""
        self.clock = clock

    async def sweep(self) -> list[str]:
        """One pass over every metro's bucket; the names it deleted."""
        owners: dict[tuple[str, str], ResourceRecord] = {}
        metros = set(self.metros())
        for kind, store_kind, states in _OWNERS:
            for record in await self.store.in_states(store_kind, states):
                owners[kind, record.id] = record
                metros.add(record.spec["metro"])
        deleted: list[str] = []
        now = self.clock()
        for metro in sorted(metros):
            for blob in await self.buckets.list(metro):
                parsed = owner_of(blob.name)
                owner = owners.get(parsed[:2]) if parsed is not None else None
                keep = wanted(parsed, owner)
                if keep is None:
                    keep = now - blob.written_at < self.grace_s
                if not keep and await self.buckets.delete(metro, blob.name):
                    deleted.append(blob.name)
                    log.info("deleted a blob nobody owns", extra={"blob": blob.name,
                                                                  "metro": metro})
        return deleted

    async def run(self, interval_s: float) -> None:
        while True:
            try:
                await self.sweep()
            except BlobUnavailable as exc:
                log.warning("blob sweep skipped: %s", exc)
            except Exception:
                log.exception("blob sweep failed")
            await asyncio.sleep(interval_s)


_OWNERS: tuple[tuple[str, str, list[str]], ...] = (
    ("file", FILE_KIND, [FILE_PROCESSED, FILE_DELETED]),
    ("job", JOB_KIND, [state.value for state in JobState]),
)
