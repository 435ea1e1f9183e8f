"""Fine-tune jobs on this node: the trainer as a sealed child process.

The scheduler sends ``TrainStart`` (repeated until a heartbeat names the job;
a job already known is not started twice). The agent reads the training file
from its metro's blob store, writes the plaintext to a private folder only for
as long as the trainer needs it, and runs ``volt.finetune.trainer`` in a
network namespace of its own (as the engines run: it can reach nothing), at
low CPU priority so serving keeps its share. The trainer's JSON lines become
``TrainProgress`` events (at most one step per ``progress_interval_s``; start,
checkpoints and the last step always), and the job's state rides in every
heartbeat. Each checkpoint goes to the blob store, sealed, before it is
reported, so that the job can go on from it on any node of the metro; on
success the adapter goes there too, for any node of the metro to serve.
``TrainCancel`` stops the trainer within a step (SIGTERM). If the agent dies,
the trainer dies with it (PDEATHSIG) and the job is no longer named: the
scheduler starts it again (from its last checkpoint, ``TrainStart.checkpoints``) or
fails it with that reason. A SIGKILLed agent runs no ``finally``, so the next
one deletes what an earlier run left in its work folder (the plaintext of a
training file among it) before it takes any job.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
import sys
import tarfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import msgspec

from volt.agent.seal import seal_child
from volt.config import FinetuneSettings
from volt.finetune.blobs import (
    BlobError,
    Blobs,
    BlobUnavailable,
    adapter_blob,
    checkpoint_blob,
    file_blob,
)
from volt.finetune.trainer import KEEP_CHECKPOINTS
from volt.processes import _die_with_parent, spawn, terminate
from volt.wire import TrainCancel, TrainProgress, TrainStart, TrainStatus

log = logging.getLogger(__name__)
REMEMBERED_JOBS = 64


def pack(folder: Path) -> bytes:
    """An adapter folder as a tar (its few files, flat)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")


class Training:
    def __init__(
        self,
        *,
        node_id: str,
        metro: str,
        work_dir: Path,
        model_dirs: dict[str, Path],
        settings: FinetuneSettings,
        blobs: Callable[[], Blobs | None],
        publish: Callable[[TrainProgress], Awaitable[None]],
        sealed: bool = True,
        threads: int = 1,
    ) -> None:
        self.node_id, self.metro = node_id, metro
        self.work_dir = work_dir
        self.model_dirs = model_dirs
        """Base model -> its folder (the models this node's engines serve)."""
        self.settings = settings
        self.blobs = blobs
        self.publish = publish
        self.sealed = sealed
        self.threads = threads
        self._jobs: dict[str, TrainStatus] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._processes: dict[str, asyncio.subprocess.Process] = {}
        self._sweep()

    def _sweep(self) -> None:
        """What an agent killed mid-job left: its jobs are not ours to finish (the
        scheduler starts them again), and a training file's plaintext must not
        outlive its training."""
        if self.work_dir.is_dir():
            for leftover in self.work_dir.iterdir():
                log.info("removing a job folder an earlier run left",
                         extra={"job_id": leftover.name})
                shutil.rmtree(leftover, ignore_errors=True)

    def models(self) -> list[str]:
        """The base models this node can fine-tune: those whose weights it has."""
        return sorted(self.model_dirs)

    def statuses(self) -> list[TrainStatus]:
        return list(self._jobs.values())

    def running(self) -> int:
        return sum(1 for job in self._jobs.values() if job.state == "running")

    def command(self, message: TrainStart | TrainCancel) -> None:
        if isinstance(message, TrainCancel):
            process = self._processes.get(message.job_id)
            if process is not None and process.returncode is None:
                process.terminate()  # the trainer stops at its next step
            return
        known = self._jobs.get(message.job_id)
        if known is not None and known.state == "running":
            return  # repeated until our heartbeat names it: already under way
        # Not known, or an earlier run here ended (stopped as a stray after a
        # partition, say): this is a new run of the job.
        self._remember(TrainStatus(job_id=message.job_id, state="running",
                                   checkpoints=list(message.checkpoints)))
        task = asyncio.create_task(self._train(message))
        self._tasks[message.job_id] = task
        task.add_done_callback(lambda _: self._tasks.pop(message.job_id, None))

    def _remember(self, status: TrainStatus) -> None:
        self._jobs[status.job_id] = status
        while len(self._jobs) > REMEMBERED_JOBS:
            oldest = next(job for job in self._jobs.values() if job.state != "running")
            del self._jobs[oldest.job_id]

    def _update(self, job_id: str, **changes: Any) -> None:
        self._jobs[job_id] = msgspec.structs.replace(self._jobs[job_id], **changes)

    async def stop(self) -> None:
        for task in list(self._tasks.values()):
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)

    async def _train(self, message: TrainStart) -> None:
        job_id = message.job_id
        folder = self.work_dir / job_id
        try:
            base = self.model_dirs.get(message.model)
            if base is None:
                raise TrainingFailed(f"this node does not serve the base model {message.model}")
            blobs = self.blobs()
            if blobs is None:
                raise TrainingFailed("the node is not connected to its blob store")
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            data = folder / "train.jsonl"
            await self._fetch(blobs, message.training_file, data)
            args = ["--data", str(data)]
            if message.validation_file:
                await self._fetch(blobs, message.validation_file, folder / "valid.jsonl")
                args += ["--validation", str(folder / "valid.jsonl")]
            if message.checkpoints:
                step = message.checkpoints[-1]
                resume = folder / "resume"
                try:
                    packed = await blobs.get(self.metro, checkpoint_blob(job_id, step))
                except BlobError as exc:
                    raise TrainingFailed(f"the checkpoint at step {step} could not be read: "
                                         f"{exc}") from None
                await asyncio.to_thread(unpack, packed, resume)
                args += ["--resume", str(resume)]
            outcome = await self._run_trainer(message, base, folder, args, blobs)
            if outcome is None:
                self._update(job_id, state="cancelled", error="cancelled")
                return
            packed = await asyncio.to_thread(pack, Path(outcome["path"]))  # off the event loop
            await blobs.put(self.metro, adapter_blob(job_id), packed)
            self._update(job_id, state="succeeded", step=int(outcome["step"]),
                         trained_tokens=int(outcome["trained_tokens"]))
            log.info("fine-tuning job trained", extra={"job_id": job_id})
        except TrainingFailed as exc:
            self._update(job_id, state="failed", error=str(exc))
            log.warning("fine-tuning job failed", extra={"job_id": job_id, "error": str(exc)})
        except asyncio.CancelledError:
            self._update(job_id, state="failed", error="the agent stopped")
            raise
        except Exception as exc:
            log.exception("fine-tuning job failed", extra={"job_id": job_id})
            self._update(job_id, state="failed", error=f"the node failed ({type(exc).__name__})")
        finally:
            # The plaintext of the customer's data lives only while training, and
            # what the job made is in the blob store by now (or lost with it).
            shutil.rmtree(folder, ignore_errors=True)

    async def _fetch(self, blobs: Blobs, file_id: str, path: Path) -> None:
        try:
            data = await blobs.get(self.metro, file_blob(file_id))
        except BlobError as exc:
            raise TrainingFailed(f"file {file_id} could not be read: {exc}") from None
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)

    async def _run_trainer(self, message: TrainStart, base: Path, folder: Path,
                           args: list[str], blobs: Blobs) -> dict[str, Any] | None:
        """The trainer's ``done`` line; None if it was cancelled."""
        command = [sys.executable, "-m", "volt.finetune.trainer", "--base", str(base),
                   "--out", str(folder / "out"), "--epochs", str(message.n_epochs),
                   "--batch-size", str(message.batch_size),
                   "--learning-rate", str(message.learning_rate),
                   "--rank", str(message.lora_rank), "--alpha", str(message.lora_alpha),
                   "--seed", str(message.seed),
                   "--max-seq-tokens", str(self.settings.max_seq_tokens),
                   "--threads", str(self.threads), *args]
        process = await spawn(command, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"},
                              preexec=_sealed_low_priority if self.sealed else _low_priority,
                              stdout=asyncio.subprocess.PIPE)
        self._processes[message.job_id] = process
        last_sent = 0.0
        done: dict[str, Any] | None = None
        failure = ""
        try:
            assert process.stdout is not None
            async for raw in process.stdout:
                try:
                    line = json.loads(raw)
                except ValueError:
                    continue
                kind = line.get("event")
                if kind == "step":
                    self._update(message.job_id, step=line["step"],
                                 trained_tokens=line["tokens"])
                    now = time.monotonic()
                    last = line["step"] == self._jobs[message.job_id].total_steps
                    if now - last_sent >= self.settings.progress_interval_s or last:
                        last_sent = now
                        await self._progress(message.job_id, "step", line)
                elif kind == "start":
                    self._update(message.job_id, total_steps=line["total_steps"])
                    await self._progress(message.job_id, "start", line)
                elif kind == "checkpoint":
                    if await self._keep_checkpoint(message.job_id, folder, line, blobs):
                        await self._progress(message.job_id, "checkpoint", line)
                elif kind == "done":
                    done = line
                elif kind == "cancelled":
                    return None
                elif kind == "failed":
                    failure = str(line.get("error", ""))
            code = await process.wait()
        finally:
            self._processes.pop(message.job_id, None)
            await terminate(process)
        if done is not None:
            return done
        raise TrainingFailed(failure or f"the trainer exited with status {code}")

    async def _keep_checkpoint(self, job_id: str, folder: Path, line: dict[str, Any],
                               blobs: Blobs) -> bool:
        """Store a checkpoint where any node of the metro can go on from it, and
        drop the one it pushes out. A blob store that does not answer costs this
        checkpoint (it is not reported, so nothing resumes from it), not the job."""
        step = int(line["step"])
        try:
            data = await asyncio.to_thread(pack, Path(line["path"]))
            await blobs.put(self.metro, checkpoint_blob(job_id, step), data)
        except BlobUnavailable:
            log.warning("a checkpoint could not be stored", extra={"job_id": job_id})
            return False
        kept = [*self._jobs[job_id].checkpoints, step]
        self._update(job_id, checkpoints=kept[-KEEP_CHECKPOINTS:])
        for old in kept[:-KEEP_CHECKPOINTS]:
            shutil.rmtree(folder / "out" / "checkpoints" / f"step-{old}", ignore_errors=True)
            try:
                await blobs.delete(self.metro, checkpoint_blob(job_id, old))
            except BlobUnavailable:
                log.warning("an old checkpoint could not be deleted", extra={"job_id": job_id})
        return True

    async def _progress(self, job_id: str, kind: str, line: dict[str, Any]) -> None:
        status = self._jobs[job_id]
        with contextlib.suppress(Exception):  # a lost metric is harmless
            await self.publish(TrainProgress(
                node_id=self.node_id, job_id=job_id, event=kind,  # type: ignore[arg-type]
                step=int(line.get("step", 0)), total_steps=status.total_steps,
                epoch=int(line.get("epoch", 0)), train_loss=line.get("loss"),
                valid_loss=line.get("valid_loss"), trained_tokens=status.trained_tokens,
                at=time.time()))


class TrainingFailed(Exception):
    """Why a job failed, in words for its events (never a line of its data)."""


def _low_priority() -> None:
    _die_with_parent()
    os.nice(10)


def _sealed_low_priority() -> None:
    seal_child()
    os.nice(10)
