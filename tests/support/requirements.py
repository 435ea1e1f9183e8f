"""Skipping for a missing part, except in CI, where it is a failure."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def require(reason: str) -> NoReturn:
    """Skip for a part this machine lacks, saying why; in CI, fail instead:
    CI installs everything, so a missing part there is a broken set-up."""
    if os.environ.get("CI"):
        pytest.fail(f"CI must provide this: {reason}")
    pytest.skip(reason)
