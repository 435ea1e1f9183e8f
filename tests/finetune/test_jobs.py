"""The scheduler's fine-tuning writer against a real store, with the nodes'
heartbeats played by hand: placement in the file's metro, the fate read from
heartbeats, a lost job going on from its last checkpoint (and failing with its
reason past its attempts), a restart losing nothing."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import nats
import pytest

from volt.config import FinetuneSettings
from volt.finetune.blobs import Blobs, adapter_blob, checkpoint_blob, file_blob
from volt.finetune.jobs import FinetuneError, FineTuning, kept_checkpoints, tuned_model
from volt.finetune.states import JOBS, TERMINAL, JobEvent, JobState
from volt.lifecycle import InvalidTransition
from volt.scheduler.node_states import NodeState
from volt.scheduler.node_table import NodeRecord
from volt.store import Database
from volt.store.resources import ResourceStore
from volt.up.nats_server import NatsServer
from volt.wire import (
    AdapterDrop,
    FileRecord,
    JobCreate,
    TrainCancel,
    TrainProgress,
    TrainStart,
    TrainStatus,
)


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def node(node_id: str, metro: str, models: tuple[str, ...] = ("volt-tiny",)) -> NodeRecord:
    return NodeRecord(node_id=node_id, metro=metro, tier="standard", models=list(models),
                      state=NodeState.READY, last_seen=0, heartbeat_interval_s=1,
                      trains=list(models))


class World:
    def __init__(self, db: Database) -> None:
        self.clock = Clock()
        self.sent: list[tuple[str, object]] = []
        self.nodes = [node("fra-1", "fra"), node("ams-1", "ams")]
        self.db = db
        self.writer = self.make()

    def make(self) -> FineTuning:
        async def send(node_id: str, message: object) -> None:
            self.sent.append((node_id, message))

        return FineTuning(ResourceStore(self.db), FinetuneSettings(lost_after_s=10),
                            nodes=lambda: self.nodes, send=send, clock=self.clock)

    async def file(self, file_id: str = "file-1", metro: str = "fra",
                   org: str = "org_a") -> None:
        await self.writer.record_file(FileRecord(
            org_id=org, file_id=file_id, metro=metro, filename="t.jsonl", bytes=10,
            purpose="fine-tune", examples=4, sha256="x"))

    async def job(self, org: str = "org_a", file_id: str = "file-1") -> str:
        record = await self.writer.create_job(JobCreate(
            org_id=org, model="volt-tiny", training_file=file_id, seed=1, n_epochs=1,
            batch_size=1, learning_rate_multiplier=1.0, lora_rank=8, lora_alpha=16,
            suffix="s"))
        return record.id

    async def state(self, job_id: str) -> str:
        record = await ResourceStore(self.db).get("fine_tuning_job", job_id)
        assert record is not None
        return record.state


async def messages(world: World, job_id: str) -> list[str]:
    """The job's event messages, newest first."""
    page = await ResourceStore(world.db).log(job_id, limit=100)
    return [entry["message"] for entry in page.entries]


@pytest.fixture
def world(db: Database) -> World:
    return World(db)


def test_the_table_ends_every_job_once() -> None:
    state = JobState.VALIDATING_FILES
    for event in (JobEvent.VALIDATED, JobEvent.STARTED, JobEvent.SUCCEEDED):
        state = JOBS.next(state, event)
    assert state is JobState.SUCCEEDED
    for terminal in TERMINAL:
        for event in JobEvent:
            with pytest.raises(InvalidTransition):
                JOBS.next(terminal, event)


async def test_a_job_trains_in_its_files_metro_and_succeeds(world: World) -> None:
    await world.file(metro="ams")
    job_id = await world.job()
    await world.writer.reconcile()  # files validated
    await world.writer.reconcile()  # placed
    assert await world.state(job_id) == "running"
    [(node_id, start)] = world.sent
    assert node_id == "ams-1"
    assert isinstance(start, TrainStart)
    assert start.learning_rate == FinetuneSettings().learning_rate
    world.writer.node_report("ams-1", [TrainStatus(job_id=job_id, state="running")])
    await world.writer.progress(TrainProgress(node_id="ams-1", job_id=job_id, event="step",
                                              step=1, total_steps=4, train_loss=2.5))
    # Progress from a node that does not run the job is ignored.
    await world.writer.progress(TrainProgress(node_id="fra-1", job_id=job_id, event="step",
                                              step=3, total_steps=4, train_loss=0.1))
    world.writer.node_report("ams-1", [TrainStatus(job_id=job_id, state="succeeded",
                                                   trained_tokens=99, step=4)])
    await world.writer.reconcile()
    record = await ResourceStore(world.db).get("fine_tuning_job", job_id)
    assert record is not None
    assert record.state == "succeeded"
    assert record.status["fine_tuned_model"] == f"ft:volt-tiny:org_a:s:{job_id}"
    assert record.status["trained_tokens"] == 99
    events = (await ResourceStore(world.db).log(job_id, limit=100)).entries
    assert [e["data"].get("train_loss") for e in events if e["type"] == "metrics"] == [2.5]
    assert events[0]["message"] == "The job has successfully completed"  # newest first
    assert "events" not in record.status  # the log has rows of its own
    assert record.status["fine_tuned_model"] in world.writer.cards


async def test_no_node_in_the_metro_that_can_train_keeps_it_queued(world: World) -> None:
    await world.file(metro="ams")
    serving_only = node("ams-2", "ams")
    serving_only.trains = []  # a vLLM host: serves tuned models, trains none
    world.nodes = [node("fra-1", "fra"), serving_only]
    job_id = await world.job()
    for _ in range(3):
        await world.writer.reconcile()
    assert await world.state(job_id) == "queued"
    assert not world.sent


async def test_a_lost_job_goes_on_from_its_last_checkpoint_then_fails_past_max_attempts(
        world: World) -> None:
    await world.file()
    job_id = await world.job()
    await world.writer.reconcile()
    await world.writer.reconcile()
    assert world.sent[-1][0] == "fra-1"
    assert world.sent[-1][1].checkpoints == []  # type: ignore[attr-defined]

    async def lose_it(step: int) -> None:
        world.clock.now += 1
        world.writer.node_report("fra-1", [TrainStatus(job_id=job_id, state="running")])
        for checkpoint in (step - 1, step):
            await world.writer.progress(TrainProgress(
                node_id="fra-1", job_id=job_id, event="checkpoint", step=checkpoint,
                total_steps=40, epoch=checkpoint))
        world.clock.now += 30
        world.writer.node_report("fra-1", [])  # the agent restarted: it forgot the job
        await world.writer.reconcile()

    await lose_it(2)
    record = await ResourceStore(world.db).get("fine_tuning_job", job_id)
    assert record is not None
    assert record.state == "queued"
    assert record.status["attempts"] == 2
    assert record.status["node_id"] is None
    world.sent.clear()
    await world.writer.reconcile()  # placed again: on the node that came back
    assert await world.state(job_id) == "running"
    (node_id, start), = world.sent
    assert node_id == "fra-1"
    assert isinstance(start, TrainStart)
    assert start.checkpoints == [1, 2]

    await lose_it(5)  # the second run's checkpoints; three are kept
    await world.writer.reconcile()
    assert world.sent[-1][1].checkpoints == [2, 4, 5]  # type: ignore[attr-defined]

    await lose_it(8)  # the third run, the last allowed
    record = await ResourceStore(world.db).get("fine_tuning_job", job_id)
    assert record is not None
    assert record.state == "failed"
    message = record.status["error"]["message"]
    assert "fra-1" in message
    assert "started 3 times" in message
    events = await messages(world, job_id)
    assert sum("goes on from its checkpoint at step" in m for m in events) == 2
    assert any("resumed on a node in fra from its checkpoint at step 5" in m for m in events)


async def test_a_job_lost_before_its_first_checkpoint_starts_again(world: World) -> None:
    await world.file()
    job_id = await world.job()
    await world.writer.reconcile()
    await world.writer.reconcile()
    world.clock.now += 60  # no heartbeat names it
    world.writer.node_report("fra-1", [])
    await world.writer.reconcile()
    assert await world.state(job_id) == "queued"
    events = await messages(world, job_id)
    assert "starts again from the beginning" in events[0]


async def test_a_node_cut_off_and_back_is_told_to_stop_a_job_that_went_on_elsewhere(
        world: World) -> None:
    world.nodes = [node("fra-1", "fra"), node("fra-2", "fra")]
    await world.file()
    job_id = await world.job()
    await world.writer.reconcile()
    await world.writer.reconcile()
    [(first, _)] = world.sent
    world.writer.node_report(first, [TrainStatus(job_id=job_id, state="running")])
    world.clock.now += 30  # its heartbeats stop: cut off, its trainer still running
    other = "fra-2" if first == "fra-1" else "fra-1"
    world.writer.node_report(other, [])
    await world.writer.reconcile()  # requeued: its last word ("running") is stale
    assert await world.state(job_id) == "queued"
    assert f"the node running it ({first}) stopped sending heartbeats" in \
        (await messages(world, job_id))[0]
    await world.writer.reconcile()  # placed on the other node
    assert world.sent[-1][0] == other
    assert isinstance(world.sent[-1][1], TrainStart)
    world.sent.clear()
    world.writer.node_report(other, [TrainStatus(job_id=job_id, state="running")])
    world.writer.node_report(first, [TrainStatus(job_id=job_id, state="running")])  # back
    await world.writer.reconcile()
    assert world.sent == [(first, TrainCancel(node_id=first, job_id=job_id))]
    await world.writer.reconcile()  # not again at every pass...
    assert len(world.sent) == 1
    world.clock.now += 11
    world.writer.node_report(other, [TrainStatus(job_id=job_id, state="running")])
    world.writer.node_report(first, [TrainStatus(job_id=job_id, state="running")])
    await world.writer.reconcile()  # ...but again while it goes on
    assert world.sent[1:] == [(first, TrainCancel(node_id=first, job_id=job_id))]
    assert await world.state(job_id) == "running"  # the run that counts goes on
    record = await ResourceStore(world.db).get("fine_tuning_job", job_id)
    assert record is not None
    assert record.status["node_id"] == other


async def test_a_partitioned_only_node_stops_its_stray_run_and_trains_the_job_again(
        world: World) -> None:
    """One node in the metro: cut off, the job queued again; back, its old run
    is stopped, and the job goes to it again — the old run's "cancelled" is
    not taken for the new run's fate."""
    world.nodes = [node("fra-1", "fra")]
    await world.file()
    job_id = await world.job()
    await world.writer.reconcile()
    await world.writer.reconcile()
    world.writer.node_report("fra-1", [TrainStatus(job_id=job_id, state="running")])
    world.clock.now += 30  # silent: the job is queued again
    await world.writer.reconcile()
    assert await world.state(job_id) == "queued"
    world.clock.now += 1
    world.writer.node_report("fra-1", [TrainStatus(job_id=job_id, state="running")])  # back
    world.sent.clear()
    await world.writer.reconcile()  # told to stop; busy with it, so not placed yet
    assert world.sent == [("fra-1", TrainCancel(node_id="fra-1", job_id=job_id))]
    assert await world.state(job_id) == "queued"
    world.clock.now += 1
    world.writer.node_report("fra-1", [TrainStatus(job_id=job_id, state="cancelled")])
    world.clock.now += 1
    await world.writer.reconcile()  # free again: placed there
    assert isinstance(world.sent[-1][1], TrainStart)
    await world.writer.reconcile()  # the stale "cancelled" (of the old run) says nothing
    assert await world.state(job_id) == "running"
    world.clock.now += 1
    world.writer.node_report("fra-1", [TrainStatus(job_id=job_id, state="succeeded",
                                                   trained_tokens=5, step=4)])
    await world.writer.reconcile()
    assert await world.state(job_id) == "succeeded"


async def test_a_restarted_writer_picks_the_job_up_from_the_next_heartbeat(world: World
                                                                          ) -> None:
    await world.file()
    job_id = await world.job()
    await world.writer.reconcile()
    await world.writer.reconcile()
    world.clock.now += 60  # down for a minute
    world.writer = world.make()  # the scheduler restarted: nothing in memory
    world.clock.now += 1
    await world.writer.reconcile()  # no heartbeat yet since the restart: it waits
    assert await world.state(job_id) == "running"
    world.writer.node_report("fra-1", [TrainStatus(job_id=job_id, state="succeeded")])
    await world.writer.reconcile()
    assert await world.state(job_id) == "succeeded"


async def test_cancel_tells_the_node_and_a_used_file_cannot_be_deleted(world: World) -> None:
    await world.file()
    job_id = await world.job()
    with pytest.raises(FinetuneError) as in_use:
        await world.writer.delete_file("org_a", "file-1")
    assert in_use.value.status == 409
    await world.writer.reconcile()
    await world.writer.reconcile()
    await world.writer.cancel_job("org_a", job_id)
    assert isinstance(world.sent[-1][1], TrainCancel)
    with pytest.raises(FinetuneError) as again:
        await world.writer.cancel_job("org_a", job_id)
    assert again.value.status == 409
    await world.writer.delete_file("org_a", "file-1")


async def test_another_orgs_file_or_job_is_not_found(world: World) -> None:
    await world.file(org="org_b")
    with pytest.raises(FinetuneError) as missing:
        await world.job(org="org_a")
    assert missing.value.status == 404
    assert missing.value.param == "training_file"
    job_id = await world.job(org="org_b")
    with pytest.raises(FinetuneError) as other:
        await world.writer.cancel_job("org_a", job_id)
    assert other.value.status == 404


async def test_a_node_trains_one_job_at_a_time_even_right_after_a_restart(world: World
                                                                         ) -> None:
    await world.file()
    first, second = await world.job(), await world.job()
    await world.writer.reconcile()
    await world.writer.reconcile()
    states = sorted([await world.state(first), await world.state(second)])
    assert states == ["queued", "running"]  # one node in fra: one job on it
    world.writer = world.make()  # restarted: no heartbeat has said fra-1 is busy
    await world.writer.reconcile()
    assert sorted([await world.state(first), await world.state(second)]) == states
    assert len([m for _, m in world.sent if isinstance(m, TrainStart)]) == 1


@pytest.fixture
async def blobs(nats_server: NatsServer) -> AsyncIterator[Blobs]:
    nc = await nats.connect(nats_server.url)
    yield Blobs(nc, os.urandom(32))
    await nc.close()


async def succeeded(world: World, steps: tuple[int, ...]) -> str:
    """A job that checkpointed at ``steps`` and succeeded on fra-1."""
    await world.file()
    job_id = await world.job()
    await world.writer.reconcile()
    await world.writer.reconcile()
    world.writer.node_report("fra-1", [TrainStatus(job_id=job_id, state="running")])
    for step in steps:
        await world.writer.progress(TrainProgress(node_id="fra-1", job_id=job_id,
                                                  event="checkpoint", step=step,
                                                  total_steps=steps[-1], epoch=step))
    world.writer.node_report("fra-1", [TrainStatus(job_id=job_id, state="succeeded",
                                                   step=steps[-1])])
    await world.writer.reconcile()
    assert await world.state(job_id) == "succeeded"
    return job_id


async def names(blobs: Blobs) -> set[str]:
    return {blob.name for blob in await blobs.list("fra")}


async def test_a_deleted_tuned_model_goes_everywhere_and_for_good(world: World,
                                                                  blobs: Blobs) -> None:
    world.writer.buckets = blobs
    job_id = await succeeded(world, (10, 20, 30, 40))
    record = await ResourceStore(world.db).get("fine_tuning_job", job_id)
    assert record is not None
    model = tuned_model(record)
    stored = {file_blob("file-1"), adapter_blob(job_id),
              *(checkpoint_blob(job_id, step) for step in (20, 30, 40))}
    for name in stored:
        await blobs.put("fra", name, b"sealed")
    assert set(world.writer.cards) == {model.id, *(model.checkpoint(s).id for s in (20, 30, 40))}
    world.sent.clear()

    # One checkpoint: it alone goes, from the catalog, the blobs and fra's nodes.
    assert await world.writer.delete_model("org_a", model.checkpoint(30).id) == \
        [model.checkpoint(30).id]
    assert model.checkpoint(30).id not in world.writer.cards
    assert await names(blobs) == stored - {checkpoint_blob(job_id, 30)}
    assert world.sent == [("fra-1", AdapterDrop(node_id="fra-1",
                                                models=[model.checkpoint(30).id]))]
    record = await ResourceStore(world.db).get("fine_tuning_job", job_id)
    assert record is not None
    assert [c["step_number"] for c in kept_checkpoints(record)] == [20, 40]
    for gone in (model.checkpoint(30).id, model.checkpoint(10).id,  # deleted, not kept
                 model.checkpoint(41).id, f"ft:volt-tiny:org_a:other:{job_id}"):
        with pytest.raises(FinetuneError) as refused:
            await world.writer.delete_model("org_a", gone)
        assert refused.value.status == 404
    with pytest.raises(FinetuneError) as refused:  # another org's: as if it did not exist
        await world.writer.delete_model("org_b", model.id)
    assert refused.value.status == 404

    # The job's model: its kept checkpoints go with it; the training file stays.
    world.sent.clear()
    assert await world.writer.delete_model("org_a", model.id) == \
        [model.checkpoint(20).id, model.checkpoint(40).id, model.id]
    assert world.writer.cards == {}
    assert await names(blobs) == {file_blob("file-1")}
    assert world.sent == [("fra-1", AdapterDrop(node_id="fra-1", models=[
        model.checkpoint(20).id, model.checkpoint(40).id, model.id]))]
    with pytest.raises(FinetuneError):
        await world.writer.delete_model("org_a", model.id)
    assert await world.state(job_id) == "succeeded"  # the job and its events stay
    assert f"Fine-tuned model deleted: {model.id}" in await messages(world, job_id)
    restarted = world.make()
    await restarted.load()
    assert restarted.cards == {}  # never served again


async def test_only_a_succeeded_jobs_model_can_be_deleted(world: World) -> None:
    await world.file()
    job_id = await world.job()
    record = await ResourceStore(world.db).get("fine_tuning_job", job_id)
    assert record is not None
    for model_id in (tuned_model(record).id, "volt-tiny", "ft:nonsense"):
        with pytest.raises(FinetuneError) as refused:
            await world.writer.delete_model("org_a", model_id)
        assert refused.value.status == 404
