"""The blob sweeper against a real store and a real JetStream object store:
what nobody owns any more goes, what a file or job still needs stays, and a
blob whose owner is not recorded yet is given its grace period."""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from typing import Any

import nats
import pytest

from volt.finetune.blobs import Blobs, adapter_blob, checkpoint_blob, file_blob
from volt.finetune.sweeper import BlobSweeper
from volt.store import Database
from volt.store.resources import ResourceStore
from volt.up.nats_server import NatsServer

GRACE_S = 3600.0


@pytest.fixture
async def blobs(nats_server: NatsServer) -> AsyncIterator[Blobs]:
    nc = await nats.connect(nats_server.url)
    yield Blobs(nc, os.urandom(32))
    await nc.close()


def _checkpoints(*steps: int, deleted: tuple[int, ...] = ()) -> list[dict[str, Any]]:
    return [{"id": f"ftckpt-{s}", "created_at": 1, "step_number": s, "deleted": s in deleted}
            for s in steps]


async def record(store: ResourceStore, kind: str, id: str, state: str,
                 status: dict[str, Any] | None = None) -> None:
    await store.create(kind=kind, id=id, org_id="org_a", state=state, now=time.time(),
                       spec={"metro": "fra"}, status=status or {})


async def test_a_sweep_keeps_what_is_owned_and_deletes_the_rest(db: Database,
                                                               blobs: Blobs) -> None:
    store = ResourceStore(db)
    await record(store, "file", "file-kept", "processed")
    await record(store, "file", "file-deleted", "deleted")
    await record(store, "fine_tuning_job", "ftjob-ok", "succeeded",
                 {"checkpoints": _checkpoints(1, 2, 3, 4, deleted=(3,))})
    await record(store, "fine_tuning_job", "ftjob-gone", "succeeded",
                 {"model_deleted": True, "checkpoints": _checkpoints(1)})
    await record(store, "fine_tuning_job", "ftjob-failed", "failed",
                 {"checkpoints": _checkpoints(1)})
    await record(store, "fine_tuning_job", "ftjob-running", "running",
                 {"step": 5, "checkpoints": _checkpoints(5)})
    keep = {
        file_blob("file-kept"),
        adapter_blob("ftjob-ok"), checkpoint_blob("ftjob-ok", 2), checkpoint_blob("ftjob-ok", 4),
        adapter_blob("ftjob-running"), checkpoint_blob("ftjob-running", 5),
        "notes/not-volts",  # a name Volt does not write: not its to judge
    }
    delete_now = {
        file_blob("file-deleted"),  # the API replica died before its purge
        checkpoint_blob("ftjob-ok", 1),  # pushed out by newer checkpoints
        checkpoint_blob("ftjob-ok", 3),  # deleted as a model
        adapter_blob("ftjob-gone"), checkpoint_blob("ftjob-gone", 1),
        adapter_blob("ftjob-failed"), checkpoint_blob("ftjob-failed", 1),
    }
    young = {
        file_blob("file-uploading"),  # written before its record
        checkpoint_blob("ftjob-running", 6),  # written before it is reported
    }
    for name in keep | delete_now | young:
        await blobs.put("fra", name, b"sealed")
    now = time.time()
    sweeper = BlobSweeper(store, blobs, grace_s=GRACE_S, clock=lambda: now)

    assert set(await sweeper.sweep()) == delete_now
    assert {b.name for b in await blobs.list("fra")} == keep | young
    assert await sweeper.sweep() == []  # nothing more to do

    now += GRACE_S + 1  # the grace has passed: an owner never came
    assert set(await sweeper.sweep()) == young
    assert {b.name for b in await blobs.list("fra")} == keep


async def test_a_metro_without_a_bucket_is_nothing_to_sweep(db: Database,
                                                            blobs: Blobs) -> None:
    sweeper = BlobSweeper(ResourceStore(db), blobs, grace_s=GRACE_S, metros=lambda: {"ams"})
    assert await sweeper.sweep() == []
    assert await blobs.list("ams") == []
