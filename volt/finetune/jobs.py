"""The scheduler's fine-tuning: the single writer of training files' records
and of fine-tune jobs.

Commands (record a file, delete one, create a job, cancel one, delete a tuned
model) are applied one at a time under one lock, every write a compare-and-set
on the row (``ResourceStore``). The reconcile loop moves jobs on: it checks a job's files
(VALIDATING_FILES), places a QUEUED job on a live node of the training file's
metro that can train the base model (it has its weights) and trains nothing else, sends
it ``TrainStart`` (no data: the agent reads the file from the metro's blob
store), and from then on reads the job's fate from that node's heartbeats —
level-triggered, so a scheduler restarted (SIGKILL included) picks each job up
from the next heartbeat, and a job its agent no longer names (the agent died
or restarted) is queued again to go on from its last checkpoint — or, once
it has been started ``max_attempts`` times, fails with that reason instead of
staying RUNNING forever. A node that says it runs a job that is not its own
(cut off, then back after the job went on elsewhere) is told to stop it.
Progress events (step, loss) arrive on the node's ``training`` subject and
become the job's events. Time is an injected clock (wall seconds).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from volt.config import FinetuneSettings
from volt.finetune import model_ids
from volt.finetune.blobs import BlobBuckets, BlobUnavailable, model_blob
from volt.finetune.model_ids import TunedModel, org_token
from volt.finetune.states import JOBS, LIVE, JobEvent, JobState
from volt.finetune.trainer import KEEP_CHECKPOINTS
from volt.lifecycle import Refusal, reconcile_forever
from volt.scheduler.node_states import LIVE as NODE_LIVE
from volt.scheduler.node_table import NodeRecord
from volt.store.resources import ResourceRecord, ResourceStore, StaleResource
from volt.wire import (
    AdapterDrop,
    FileRecord,
    JobCreate,
    ModelCard,
    TrainCancel,
    TrainProgress,
    TrainStart,
    TrainStatus,
    WireMessage,
)

log = logging.getLogger(__name__)
FILE_KIND = "file"
JOB_KIND = "fine_tuning_job"
FILE_PROCESSED = "processed"
FILE_DELETED = "deleted"


class FinetuneError(Refusal):
    """A fine-tuning command refused."""


def model_not_found(model_id: str) -> FinetuneError:
    return FinetuneError(f"The model `{model_id}` does not exist or you do not have access "
                         "to it.", code="model_not_found", status=404, param="model")


def job_not_found(job_id: str) -> FinetuneError:
    return FinetuneError(f"No fine-tuning job {job_id}.", code="job_not_found", status=404,
                         param="job_id")


def file_not_found(file_id: str, param: str = "file_id") -> FinetuneError:
    return FinetuneError(f"No file {file_id}.", code="file_not_found", status=404, param=param)


def tuned_model(record: ResourceRecord) -> TunedModel:
    """The model a job makes (once it succeeds); its checkpoints' are ``.checkpoint(step)``."""
    return TunedModel(record.spec["model"], org_token(record.org_id),
                      record.spec.get("suffix", ""), record.id)


def kept_checkpoints(record: ResourceRecord) -> list[dict[str, Any]]:
    """The job's checkpoints that its blobs still hold (the last ones, less
    those deleted as models; none once the job's model is), oldest first."""
    if record.status.get("model_deleted"):
        return []
    return [c for c in record.status.get("checkpoints", [])[-KEEP_CHECKPOINTS:]
            if not c.get("deleted")]


def _kept_steps(record: ResourceRecord) -> list[int]:
    return [int(c["step_number"]) for c in kept_checkpoints(record)]


@dataclass(slots=True)
class _Report:
    at: float
    jobs: dict[str, TrainStatus]


def event(message: str, *, at: float, level: str = "info", kind: str = "message",
          data: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": "ftevent-" + secrets.token_hex(12), "created_at": int(at), "level": level,
            "message": message, "type": kind, "data": data or {}}


class FineTuning:
    def __init__(
        self,
        store: ResourceStore,
        settings: FinetuneSettings,
        *,
        nodes: Callable[[], list[NodeRecord]] = list,
        send: Callable[[str, WireMessage], Awaitable[None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.nodes = nodes
        """The live node table's records (the scheduler's)."""
        self.send = send
        """Publish a training command to one node (node id, message)."""
        self.buckets: BlobBuckets | None = None
        """The metros' blob stores (names and deletes only: no key)."""
        self.clock = clock
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._reports: dict[str, _Report] = {}
        self._running_on: set[str] = set()
        self._stopped: dict[tuple[str, str], float] = {}
        """(node, job) -> when that node was last told to stop a run it should not have."""
        self._started_at = clock()
        self.cards: dict[str, ModelCard] = {}
        """Every tuned model (a succeeded job's), for the placement view's catalog."""
        self.on_change: Callable[[], None] = lambda: None
        """The catalog changed: publish the view now."""

    async def load(self) -> None:
        """The tuned models already made (at start, before serving)."""
        for record in await self.store.in_states(JOB_KIND, [JobState.SUCCEEDED.value]):
            self._add_card(record)

    def _add_card(self, record: ResourceRecord) -> None:
        """The job's model, and its kept checkpoints' (OpenAI serves those too)."""
        model = record.status.get("fine_tuned_model")
        if not model or record.status.get("model_deleted"):
            return
        tuned = tuned_model(record)
        made = [(model, int(record.status.get("finished_at", record.updated_at)))]
        made += [(tuned.checkpoint(int(c["step_number"])).id, int(c["created_at"]))
                 for c in kept_checkpoints(record)]
        for model_id, created in made:
            self.cards[model_id] = ModelCard(id=model_id, created=created, owned_by=record.org_id,
                                             org_id=record.org_id,
                                             base=record.spec["model"],
                                             metro=record.spec["metro"])

    # --- commands ----------------------------------------------------------------

    async def record_file(self, command: FileRecord) -> ResourceRecord:
        spec = {"filename": command.filename, "bytes": command.bytes,
                "purpose": command.purpose, "metro": command.metro,
                "examples": command.examples, "sha256": command.sha256,
                "created_by": command.created_by}
        async with self._lock:
            return await self.store.create(kind=FILE_KIND, id=command.file_id,
                                           org_id=command.org_id, state=FILE_PROCESSED,
                                           spec=spec, status={}, now=self.clock())

    async def delete_file(self, org_id: str, file_id: str) -> ResourceRecord:
        """Mark the file deleted (the API then purges its blob). A file that a
        live job still trains on is refused: the job would fail."""
        async with self._lock:
            record = await self.store.get(FILE_KIND, file_id, org_id=org_id)
            if record is None or record.state == FILE_DELETED:
                raise file_not_found(file_id)
            for job in await self.store.in_states(JOB_KIND, [s.value for s in LIVE]):
                if job.org_id == org_id and file_id in (job.spec["training_file"],
                                                        job.spec.get("validation_file")):
                    raise FinetuneError(
                        f"File {file_id} is in use by fine-tuning job {job.id}; cancel the "
                        "job first.", code="file_in_use", status=409, param="file_id")
            return await self.store.transition(record, event="delete", to=FILE_DELETED,
                                               now=self.clock(), reason="deleted by the org")

    async def _usable_file(self, org_id: str, file_id: str, param: str) -> ResourceRecord:
        record = await self.store.get(FILE_KIND, file_id, org_id=org_id)
        if record is None or record.state != FILE_PROCESSED:
            raise file_not_found(file_id, param)
        if record.spec["purpose"] != "fine-tune":
            raise FinetuneError(f"File {file_id} has purpose {record.spec['purpose']}, not "
                                "fine-tune.", code="invalid_file_purpose", status=400,
                                param=param)
        return record

    async def create_job(self, command: JobCreate) -> ResourceRecord:
        async with self._lock:
            training = await self._usable_file(command.org_id, command.training_file,
                                               "training_file")
            metro = training.spec["metro"]
            if command.validation_file is not None:
                validation = await self._usable_file(command.org_id, command.validation_file,
                                                     "validation_file")
                if validation.spec["metro"] != metro:
                    raise FinetuneError(
                        "The validation file is stored in metro "
                        f"{validation.spec['metro']}, the training file in {metro}: both must "
                        "be in the same metro (training data never leaves its metro).",
                        code="files_in_different_metros", status=400,
                        param="validation_file")
            job_id = "ftjob-" + secrets.token_hex(12)
            now = self.clock()
            spec = {"model": command.model, "training_file": command.training_file,
                    "validation_file": command.validation_file, "suffix": command.suffix,
                    "seed": command.seed, "metro": metro, "created_by": command.created_by,
                    "hyperparameters": {
                        "n_epochs": command.n_epochs, "batch_size": command.batch_size,
                        "learning_rate_multiplier": command.learning_rate_multiplier,
                        "lora_rank": command.lora_rank, "lora_alpha": command.lora_alpha}}
            record = await self.store.create(
                kind=JOB_KIND, id=job_id, org_id=command.org_id,
                state=JobState.VALIDATING_FILES.value, spec=spec, status={}, now=now,
                log=[event(f"Created fine-tuning job: {job_id}", at=now),
                     event(f"Validating training file: {command.training_file}", at=now)])
        log.info("fine-tuning job created", extra={"job_id": job_id, "org_id": command.org_id})
        self._wake.set()
        return record

    async def cancel_job(self, org_id: str, job_id: str) -> ResourceRecord:
        async with self._lock:
            record = await self.store.get(JOB_KIND, job_id, org_id=org_id)
            if record is None:
                raise job_not_found(job_id)
            state = JobState(record.state)
            if not JOBS.allows(state, JobEvent.CANCEL):
                raise FinetuneError(f"Job {job_id} is {state.value} already; only a job that "
                                    "has not ended can be cancelled.", code="job_not_cancellable",
                                    status=409, param="job_id")
            node = record.status.get("node_id")
            record = await self._advance(record, JobEvent.CANCEL, "cancelled by the org",
                                         events=[event("Fine-tuning job cancelled",
                                                       at=self.clock())])
        if node and self.send is not None:
            await self.send(node, TrainCancel(node_id=node, job_id=job_id))
        return record

    async def delete_model(self, org_id: str, model_id: str) -> list[str]:
        """Delete a tuned model for good: the job's model takes its checkpoints
        along; a checkpoint goes alone. Recorded first (the catalog drops it,
        a restarted scheduler never serves it again), then its blobs are
        purged (a blob store that is away leaves them to the sweeper) and the
        nodes of its metro drop their copies. The job and its events stay."""
        tuned = model_ids.parse(model_id)
        if tuned is None:
            raise model_not_found(model_id)
        async with self._lock:
            record = await self.store.get(JOB_KIND, tuned.job_id, org_id=org_id)
            if record is None or record.state != JobState.SUCCEEDED:
                raise model_not_found(model_id)
            made = tuned_model(record)
            if (made if tuned.step is None else made.checkpoint(tuned.step)).id != model_id:
                raise model_not_found(model_id)  # the job's, but not a model it made
            kept = kept_checkpoints(record)
            now = self.clock()
            if tuned.step is None:
                if record.status.get("model_deleted"):
                    raise model_not_found(model_id)
                gone = [tuned.checkpoint(int(c["step_number"])) for c in kept] + [tuned]
                status = {**record.status, "model_deleted": True}
            else:
                if tuned.step not in {int(c["step_number"]) for c in kept}:
                    raise model_not_found(model_id)
                gone = [tuned]
                status = {**record.status, "checkpoints": [
                    {**c, "deleted": True} if int(c["step_number"]) == tuned.step else c
                    for c in record.status.get("checkpoints", [])]}
            ids = [model.id for model in gone]
            record = await self.store.update_status(record, status, now, log=[
                event(f"Fine-tuned model deleted: {model_id}", at=now) for model_id in ids])
            for model_id in ids:
                self.cards.pop(model_id, None)
        self.on_change()
        metro = record.spec["metro"]
        log.info("tuned model deleted", extra={"job_id": record.id, "models": len(ids)})
        if self.buckets is not None:
            try:
                for model in gone:
                    await self.buckets.delete(metro, model_blob(model))
            except BlobUnavailable:
                log.warning("the blob store was away: the deleted model's blobs go with "
                            "the next sweep", extra={"job_id": record.id})
        if self.send is not None:
            for node in self.nodes():
                if node.metro == metro:
                    await self.send(node.node_id, AdapterDrop(node_id=node.node_id, models=ids))
        return ids

    # --- what the nodes say -------------------------------------------------------

    def node_report(self, node_id: str, jobs: list[TrainStatus]) -> None:
        """A heartbeat's training list: each job this agent knows, and how it goes."""
        previous = self._reports.get(node_id)
        report = _Report(self.clock(), {job.job_id: job for job in jobs})
        self._reports[node_id] = report
        if previous is None or {j: s.state for j, s in previous.jobs.items()} != \
                {j: s.state for j, s in report.jobs.items()}:
            self._wake.set()

    async def progress(self, message: TrainProgress) -> None:
        """A running job's step or checkpoint: one event (the loss is a metric)."""
        async with self._lock:
            record = await self.store.get(JOB_KIND, message.job_id)
            if (record is None or record.state != JobState.RUNNING
                    or record.status.get("node_id") != message.node_id):
                return  # late, or from a node that no longer runs it
            now = self.clock()
            data: dict[str, Any] = {"step": message.step, "total_steps": message.total_steps}
            if message.event == "start":
                new = event(f"Training started: {message.total_steps} steps", at=now)
            elif message.event == "checkpoint":
                data.update(epoch=message.epoch, valid_loss=message.valid_loss)
                new = event(f"Checkpoint saved at step {message.step} (epoch "
                            f"{message.epoch})", at=now, data=data)
            else:
                data.update(train_loss=message.train_loss, epoch=message.epoch,
                            trained_tokens=message.trained_tokens)
                loss = f"{message.train_loss:.4f}" if message.train_loss is not None else "-"
                new = event(f"Step {message.step}/{message.total_steps}: training loss={loss}",
                            at=now, kind="metrics", data=data)
            status = {**record.status, "step": message.step,
                      "total_steps": message.total_steps,
                      "trained_tokens": max(message.trained_tokens,
                                            int(record.status.get("trained_tokens", 0)))}
            if message.event == "checkpoint":
                status["checkpoints"] = [*record.status.get("checkpoints", []), {
                    "id": "ftckpt-" + secrets.token_hex(12), "created_at": int(now),
                    "step_number": message.step, "epoch": message.epoch,
                    "train_loss": message.train_loss, "valid_loss": message.valid_loss}]
            try:
                await self.store.update_status(record, status, now, log=[new])
            except StaleResource:
                pass  # the reconcile loop moved it meanwhile; a lost metric is harmless

    # --- the reconcile loop -------------------------------------------------------

    async def run(self) -> None:
        await reconcile_forever(self.reconcile, self._wake, self.settings.reconcile_interval_s,
                                "fine-tuning")

    async def reconcile(self) -> None:
        live = await self.store.in_states(JOB_KIND, [s.value for s in LIVE])
        # A node running a job is busy even before its first heartbeat since a
        # restart says so.
        self._running_on = {r.status.get("node_id", "") for r in live
                            if r.state == JobState.RUNNING}
        for record in live:
            async with self._lock:
                fresh = await self.store.get(JOB_KIND, record.id)
                if fresh is None or fresh.state not in LIVE:
                    continue
                try:
                    await self._reconcile_one(fresh)
                except StaleResource:
                    continue  # changed meanwhile: the next pass reads it again
        await self._stop_strays({r.id: r.status.get("node_id") for r in live
                                 if r.state == JobState.RUNNING})

    async def _stop_strays(self, running_on: dict[str, str | None]) -> None:
        """A node that says it runs a job the job's record does not give it — it
        was cut off, the job went on elsewhere, and now it is back; or it missed
        a cancel — is told to stop (again after ``lost_after_s`` if it goes on).
        ``running_on``: the pass's reading of each running job's node; only a
        node it disagrees with has the job read again (it may have just been
        placed there)."""
        now = self.clock()
        stopped, self._stopped = self._stopped, {}
        for node_id, report in list(self._reports.items()):
            if now - report.at > self.settings.lost_after_s:
                continue  # a node gone quiet: nothing it says is current
            for job_id, status in report.jobs.items():
                if status.state != "running" or running_on.get(job_id) == node_id:
                    continue
                record = await self.store.get(JOB_KIND, job_id)
                if (record is not None and record.state == JobState.RUNNING
                        and record.status.get("node_id") == node_id):
                    continue
                last = stopped.get((node_id, job_id))
                if last is not None and now - last < self.settings.lost_after_s:
                    self._stopped[node_id, job_id] = last
                    continue
                self._stopped[node_id, job_id] = now
                log.warning("a node runs a job that is not its own: telling it to stop",
                            extra={"node_id": node_id, "job_id": job_id})
                if self.send is not None:
                    await self.send(node_id, TrainCancel(node_id=node_id, job_id=job_id))

    async def _reconcile_one(self, record: ResourceRecord) -> None:
        state = JobState(record.state)
        now = self.clock()
        if state is JobState.VALIDATING_FILES:
            try:
                await self._usable_file(record.org_id, record.spec["training_file"],
                                        "training_file")
                if record.spec.get("validation_file"):
                    await self._usable_file(record.org_id, record.spec["validation_file"],
                                            "validation_file")
            except FinetuneError as exc:
                await self._advance(record, JobEvent.FAIL, str(exc), error=("invalid_file", exc))
                return
            await self._advance(record, JobEvent.VALIDATED, "files validated",
                                events=[event("Files validated, moving job to queued state",
                                              at=now)])
        elif state is JobState.QUEUED:
            node = self._choose_node(record)
            if node is None:
                return
            metro, kept = record.spec["metro"], _kept_steps(record)
            started = (f"Fine-tuning job resumed on a node in {metro} from its checkpoint at "
                       f"step {kept[-1]}" if kept else
                       f"Fine-tuning job started on a node in {metro}")
            record = await self._advance(
                record, JobEvent.STARTED, f"placed on node {node.node_id}",
                extra={"node_id": node.node_id, "dispatched_at": now,
                       "started_at": record.status.get("started_at", now)},
                events=[event(started, at=now)])
            self._running_on.add(node.node_id)
            await self._send_start(record, node.node_id)
        elif state is JobState.RUNNING:
            await self._follow(record, now)

    def _busy_nodes(self) -> set[str]:
        busy = set(self._running_on)
        for node_id, report in self._reports.items():
            if any(job.state == "running" for job in report.jobs.values()):
                busy.add(node_id)
        return busy

    def _choose_node(self, record: ResourceRecord) -> NodeRecord | None:
        metro, model = record.spec["metro"], record.spec["model"]
        busy = self._busy_nodes()
        candidates = [n for n in self.nodes()
                      if n.metro == metro and model in n.trains and n.state in NODE_LIVE
                      and not n.lease_id and not n.problems and n.node_id not in busy]
        if not candidates:
            return None
        return min(candidates, key=lambda n: (n.load.running + n.load.waiting, n.node_id))

    async def _send_start(self, record: ResourceRecord, node_id: str) -> None:
        if self.send is None:
            return
        spec, hyper = record.spec, record.spec["hyperparameters"]
        await self.send(node_id, TrainStart(
            node_id=node_id, job_id=record.id, org_id=record.org_id, model=spec["model"],
            training_file=spec["training_file"], validation_file=spec.get("validation_file"),
            n_epochs=hyper["n_epochs"], batch_size=hyper["batch_size"],
            learning_rate=self.settings.learning_rate * hyper["learning_rate_multiplier"],
            lora_rank=hyper["lora_rank"], lora_alpha=hyper["lora_alpha"], seed=spec["seed"],
            checkpoints=_kept_steps(record)))

    async def _follow(self, record: ResourceRecord, now: float) -> None:
        node_id = record.status.get("node_id", "")
        report = self._reports.get(node_id)
        status = report.jobs.get(record.id) if report is not None else None
        if report is not None and report.at < float(record.status.get("dispatched_at", 0)):
            status = None  # said before this run was sent there (of an earlier run, if any)
        if (status is not None and status.state == "running" and report is not None
                and now - report.at > self.settings.lost_after_s):
            status = None  # the node went quiet: "running" is no longer news of it
        if status is not None and status.state == "succeeded":
            model = tuned_model(record).id
            record = await self._advance(record, JobEvent.SUCCEEDED, "trained", extra={
                "fine_tuned_model": model, "finished_at": now,
                "trained_tokens": status.trained_tokens, "step": status.step},
                events=[event(f"New fine-tuned model created: {model}", at=now),
                        event("The job has successfully completed", at=now)])
            self._add_card(record)
            self.on_change()
            log.info("fine-tuning job succeeded", extra={"job_id": record.id})
            return
        if status is not None and status.state in ("failed", "cancelled"):
            reason = status.error or f"the node {status.state} the job"
            await self._advance(record, JobEvent.FAIL, reason,
                                error=("training_failed", reason))
            return
        if status is not None:
            return  # running: its events tell the rest
        # Not named by the node: not there yet (the start is on its way), or lost.
        since = max(float(record.status.get("dispatched_at", 0)), self._started_at)
        if now - since < self.settings.lost_after_s:
            if report is not None and report.at > since:
                await self._send_start(record, node_id)  # it may have missed the first
            return
        if report is None or now - report.at > self.settings.lost_after_s:
            reason = f"the node running it ({node_id}) stopped sending heartbeats"
        else:
            reason = (f"the agent on node {node_id} no longer runs it (it restarted or "
                      "stopped)")
        attempts = int(record.status.get("attempts", 1))
        if attempts >= self.settings.max_attempts:
            reason += f"; it was started {attempts} times, the most allowed"
            await self._advance(record, JobEvent.FAIL, reason, error=("node_lost", reason))
            return
        kept = _kept_steps(record)
        going_on = (f"it goes on from its checkpoint at step {kept[-1]}" if kept
                    else "it starts again from the beginning (no checkpoint yet)")
        await self._advance(record, JobEvent.REQUEUE, reason, extra={
            "attempts": attempts + 1, "node_id": None},
            events=[event(f"Fine-tuning job interrupted: {reason}; {going_on}, on the next "
                          f"free node (attempt {attempts + 1} of "
                          f"{self.settings.max_attempts})", at=now, level="warn")])
        self._wake.set()

    async def _advance(self, record: ResourceRecord, job_event: JobEvent, reason: str, *,
                       extra: dict[str, Any] | None = None,
                       events: list[dict[str, Any]] | None = None,
                       error: tuple[str, Any] | None = None) -> ResourceRecord:
        to = JOBS.next(JobState(record.state), job_event)
        now = self.clock()
        new_events = list(events or [])
        status = {**record.status, **(extra or {})}
        if error is not None:
            status["error"] = {"code": error[0], "message": str(error[1]),
                               "param": getattr(error[1], "param", None)}
            new_events.append(event(f"Fine-tuning job failed: {error[1]}", at=now,
                                    level="error"))
        if to in (JobState.FAILED, JobState.CANCELLED, JobState.SUCCEEDED):
            status.setdefault("finished_at", now)
        return await self.store.transition(record, event=job_event.value, to=to.value,
                                           now=now, reason=reason, status=status, log=new_events)
