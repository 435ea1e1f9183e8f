"""What every ``volt bench`` JSON result starts with, and where it is written."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any


def header(bench: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The bench's name, when and where it ran, and with what settings."""
    return {
        "bench": bench,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": settings,
    }


def write(report: dict[str, Any], json_path: Path | None) -> None:
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")


def progress(line: str) -> None:
    """A line on stderr while a bench runs (the table goes to stdout)."""
    print(line, file=sys.stderr, flush=True)
