"""Start Volt's CPU engine alone, on a Unix socket (for engine-level tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from volt.agent.engine.tiny_model import MODEL_ID
from volt.processes import _die_with_parent


def start_cpu_engine(model_dir: Path, socket: Path, mode: str = "model",
                     timeout_s: float = 60.0) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "volt.agent.engine.cpu_server", "--socket", str(socket),
         "--model-dir", str(model_dir), "--model-id", MODEL_ID, "--mode", mode],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + timeout_s
    while not socket.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"the CPU engine did not start on {socket}")
        time.sleep(0.05)
    return process
