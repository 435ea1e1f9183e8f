"""Programs the tests build from Go modules with a script of their own
(``tests/support/build-*``), cached outside the repository by version."""

from __future__ import annotations

import subprocess
from pathlib import Path


class BuildError(Exception):
    pass


def built(script: Path) -> Path:
    """The folder holding ``script``'s programs, building them on first use
    (its progress goes to stderr; its last line is the folder)."""
    result = subprocess.run([str(script)], stdout=subprocess.PIPE, text=True, check=False)
    if result.returncode != 0:
        raise BuildError(f"{script} failed with status {result.returncode}")
    return Path(result.stdout.strip().splitlines()[-1])
