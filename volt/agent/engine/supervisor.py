"""Keeps the engine child process alive, and answering.

The engine (the CPU engine or ``vllm serve``) runs as a child of the agent. A
crash kills only the child: the supervisor notices, marks the engine not
ready (heartbeats say so and the scheduler stops placing work here), and
restarts it with exponential backoff.

An engine can also hang without exiting (a deadlock, a stopped process, a
wedged GPU): it is asked ``/health`` every ``probe_interval_s``. Two
unanswered probes in a row take it out of placement (the next heartbeat says
so); one that answers again comes back. Silent for ``hang_timeout_s``, it is
killed, which is then a crash like any other: its requests fail over (those
that sent nothing yet) and it restarts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence

from volt.agent.engine.client import EngineClient
from volt.agent.seal import SealCheck, inspect, seal_child
from volt.processes import spawn, terminate

log = logging.getLogger(__name__)


class EngineStartFailed(Exception):
    pass


class EngineSupervisor:
    def __init__(
        self,
        command: Sequence[str],
        client: EngineClient,
        *,
        startup_timeout_s: float = 300.0,
        env: Mapping[str, str] | None = None,
        sealed: bool = True,
        probe_interval_s: float = 1.0,
        hang_timeout_s: float = 15.0,
    ) -> None:
        self.command = list(command)
        self.sealed = sealed
        """Start the engine in a network namespace of its own (``volt/agent/seal.py``)."""
        self.client = client
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.probe_interval_s = probe_interval_s
        self.hang_timeout_s = hang_timeout_s
        self.ready = asyncio.Event()
        self.restarts = 0
        self.hangs = 0
        """Engines killed for not answering (each also counts as a restart)."""
        self.pid: int | None = None
        self._paused = asyncio.Event()
        """Set while the node's GPUs are handed to a Forge lease: no engine runs."""
        self._resumed = asyncio.Event()
        self._resumed.set()
        self.stopped = asyncio.Event()
        """Set while paused and the engine is gone (its GPU memory released)."""

    def pause(self) -> None:
        """Stop the engine and keep it stopped (``stopped`` says when it is gone)."""
        self._resumed.clear()
        self._paused.set()

    def resume(self) -> None:
        self._paused.clear()
        self.stopped.clear()
        self._resumed.set()

    async def run(self) -> None:
        """Run until cancelled; the engine child never outlives this task."""
        backoff = 0.5
        while True:
            if self._paused.is_set():
                self.stopped.set()
                await self._resumed.wait()
                continue
            # A crashed engine leaves its socket file behind, and vLLM refuses
            # to bind over one ("address already in use"). The folder is
            # private to this agent, so the file is certainly stale.
            with contextlib.suppress(FileNotFoundError):
                self.client.socket_path.unlink()
            process = await spawn(self.command, env=self.env,
                                  preexec=seal_child if self.sealed else None)
            self.pid = process.pid
            try:
                await self._wait_healthy(process)
                self.ready.set()
                backoff = 0.5
                log.info("engine ready", extra={"pid": process.pid})
                watch = asyncio.create_task(self._watch(process))
                paused = asyncio.create_task(self._paused.wait())
                exited = asyncio.create_task(process.wait())
                try:
                    await asyncio.wait({paused, exited}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (watch, paused, exited):
                        task.cancel()
                    await asyncio.gather(watch, paused, exited, return_exceptions=True)
                if self._paused.is_set():
                    log.info("engine stopping: the node's GPUs go to a Forge lease",
                             extra={"pid": process.pid})
                    continue  # (finally stops it) not a crash: no backoff, no restart
                log.error("engine exited", extra={"pid": process.pid,
                                                  "exit_code": process.returncode})
            except EngineStartFailed as exc:
                if self._paused.is_set():
                    continue
                log.error("engine failed to start: %s", exc, extra={"pid": process.pid})
            finally:
                self.ready.clear()
                await terminate(process)
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        """Probe the running engine; out of placement when silent, killed when hung."""
        unanswered = 0
        silent_since = 0.0
        while process.returncode is None:
            asked = time.monotonic()
            if await self.client.healthy(timeout_s=self.probe_interval_s):
                if unanswered >= 2:
                    log.warning("engine answers again", extra={"pid": process.pid})
                    self.ready.set()
                unanswered = 0
                await asyncio.sleep(max(0.0, self.probe_interval_s - (time.monotonic() - asked)))
                continue
            if unanswered == 0:
                silent_since = asked
            unanswered += 1
            if unanswered == 2:
                log.error("engine not answering: out of placement", extra={"pid": process.pid})
                self.ready.clear()
            if time.monotonic() - silent_since >= self.hang_timeout_s:
                log.error("engine hung: killing it", extra={
                    "pid": process.pid, "silent_s": round(time.monotonic() - silent_since, 1)})
                self.hangs += 1
                with contextlib.suppress(ProcessLookupError):
                    process.kill()  # works on a stopped process too
                return
            await asyncio.sleep(max(0.0, self.probe_interval_s - (time.monotonic() - asked)))

    def seal_check(self) -> SealCheck:
        """The running engine's seal, as the kernel sees it now."""
        if self.pid is None or not self.ready.is_set():
            return SealCheck(True)  # nothing runs: nothing can leak
        return inspect(self.pid)

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self._paused.is_set():
                raise EngineStartFailed("paused while starting")
            if process.returncode is not None:
                raise EngineStartFailed(f"exited with status {process.returncode} while starting")
            if await self.client.healthy(timeout_s=1.0):
                return
            await asyncio.sleep(0.1)
        raise EngineStartFailed(f"not healthy after {self.startup_timeout_s:.0f}s")
