from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from volt.agent.engine.client import EngineClient
from volt.testing.engine import start_cpu_engine


@pytest.fixture(scope="module")
def engine_socket(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The CPU engine serving the real tiny model, one per test module."""
    socket = tmp_path_factory.mktemp("engine") / "engine.sock"
    process = start_cpu_engine(tiny_model, socket, "model")
    yield socket
    process.terminate()
    process.wait(10)


@pytest.fixture
async def engine(engine_socket: Path) -> EngineClient:
    client = EngineClient(engine_socket)
    yield client  # type: ignore[misc]
    await client.close()
