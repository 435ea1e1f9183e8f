"""Running a service's main coroutine: uvloop, signals, clean cancellation.

SIGTERM and SIGINT cancel the main task, so every ``finally`` and ``async
with`` runs (agents say goodbye, children are stopped) before the process
exits with status 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable

import uvloop


def run_service(main: Callable[[], Awaitable[None]]) -> None:
    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        try:
            await main()
        except asyncio.CancelledError:
            pass

    uvloop.run(guarded())
