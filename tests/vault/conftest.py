"""Vault's tests: real Redfish BMCs (sushy-emulator, one per node) and the boot
image (``image_server``, in the top conftest: the e2e tests use it too)."""

from __future__ import annotations

import pytest
from conftest import TALOS


@pytest.fixture(scope="session")
def image_url(image_server: str) -> str:
    return f"{image_server}/{TALOS}/metal-amd64.iso"
