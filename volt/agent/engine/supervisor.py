"""Keeps the engine child process alive.

The engine (the CPU engine or ``vllm serve``) runs as a child of the agent. A
crash kills only the child: the supervisor notices, marks the engine not
ready (heartbeats say so and the scheduler stops placing work here), and
restarts it with exponential backoff.
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
    ) -> None:
        self.command = list(command)
        self.sealed = sealed
        """Start the engine in a network namespace of its own (``volt/agent/seal.py``)."""
        self.client = client
        self.startup_timeout_s = startup_timeout_s
        self.env = env
        self.ready = asyncio.Event()
        self.restarts = 0
        self.pid: int | None = None

    async def run(self) -> None:
        """Run until cancelled; the engine child never outlives this task."""
        backoff = 0.5
        while True:
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
                code = await process.wait()
                log.error("engine exited", extra={"pid": process.pid, "exit_code": code})
            except EngineStartFailed as exc:
                log.error("engine failed to start: %s", exc, extra={"pid": process.pid})
            finally:
                self.ready.clear()
                await terminate(process)
            self.restarts += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30.0)

    def seal_check(self) -> SealCheck:
        """The running engine's seal, as the kernel sees it now."""
        if self.pid is None or not self.ready.is_set():
            return SealCheck(True)  # nothing runs: nothing can leak
        return inspect(self.pid)

    async def _wait_healthy(self, process: asyncio.subprocess.Process) -> None:
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise EngineStartFailed(f"exited with status {process.returncode} while starting")
            if await self.client.healthy(timeout_s=1.0):
                return
            await asyncio.sleep(0.1)
        raise EngineStartFailed(f"not healthy after {self.startup_timeout_s:.0f}s")
