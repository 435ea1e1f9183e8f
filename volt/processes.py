"""Starting and stopping child processes so that none is ever left behind.

Children get ``PR_SET_PDEATHSIG`` (Linux): if their parent dies, even by
SIGKILL, the kernel sends them SIGTERM. They also start in their own session,
so a Ctrl-C in the terminal reaches only the parent, which then stops its
children in order. A child's session is also its process group, which holds
what the child started in turn (vLLM's engine-core and worker processes):
once the child is gone, whatever is left of its group is killed, so a child
that died by SIGKILL leaves nothing behind (a leftover vLLM worker would keep
its GPU memory).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # runs in the child, between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    os.setsid()


def python_command(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


async def spawn(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
    preexec: Callable[[], None] | None = None,
) -> asyncio.subprocess.Process:
    """``preexec`` replaces the default child set-up (die with the parent, own
    session); it must do the same (``volt/agent/seal.py`` does, and more)."""
    return await asyncio.create_subprocess_exec(
        *command,
        env=dict(env) if env is not None else None,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=stdout,
        stderr=stderr,
        preexec_fn=(preexec or _die_with_parent) if sys.platform == "linux" else None,
    )


async def terminate(process: asyncio.subprocess.Process, timeout_s: float = 10.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout_s``; returns the exit status."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    kill_group(process.pid)
    assert process.returncode is not None
    return process.returncode


def kill_group(leader: int) -> None:
    """SIGKILL every process left in the group ``leader`` started (see above)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(leader, signal.SIGKILL)
