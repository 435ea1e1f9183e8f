"""Tuned models on a real CPU engine: adapters the trainer made, loaded on
first use, listed, the least recently used idle one unloaded when the engine
is full — and never one a request is still using; a deleted one dropped
(files at once, weights once idle) and never loaded again."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from volt.agent.adapters import Adapters, AdapterUnavailable
from volt.agent.engine.client import EngineClient
from volt.finetune.model_ids import TunedModel
from volt.testing.engine import start_cpu_engine


@pytest.fixture(scope="module")
def adapter(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("adapter")
    data = folder / "train.jsonl"
    data.write_text(json.dumps({"messages": [{"role": "user", "content": "hi"},
                                             {"role": "assistant", "content": "hello"}]}))
    subprocess.run([sys.executable, "-m", "volt.finetune.trainer", "--base", str(tiny_model),
                    "--data", str(data), "--out", str(folder / "out"), "--epochs", "1"],
                   check=True, capture_output=True, timeout=300)
    return folder / "out" / "adapter"


@pytest.fixture
def socket(tiny_model: Path, tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "engine.sock"
    process = start_cpu_engine(tiny_model, path)
    try:
        yield path
    finally:
        process.kill()
        process.wait()


async def listed(engine: EngineClient) -> set[str]:
    """The tuned models the engine says it has loaded."""
    status, body = await engine._get("/v1/models", 5)
    assert status == 200
    return {m["id"] for m in json.loads(body)["data"]} - {"volt-tiny"}


def tuned(number: int) -> TunedModel:
    return TunedModel("volt-tiny", "org_a", "s", f"ftjob-{number:024x}")


async def test_the_least_recently_used_idle_adapter_makes_room(adapter: Path, socket: Path,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "adapters"
    adapters = Adapters(metro="fra", folder=folder, blobs=lambda: None, max_loaded=2)
    for number in range(4):  # as if fetched from the blob store already
        shutil.copytree(adapter, folder / tuned(number).job_id)
    engine = EngineClient(socket)
    try:
        await adapters.ensure(engine, tuned(0))
        adapters.release(tuned(0))
        await adapters.ensure(engine, tuned(1))  # in use from here on
        await adapters.ensure(engine, tuned(2))  # full: 0 (idle, oldest) goes
        adapters.release(tuned(2))
        assert await listed(engine) == {tuned(1).id, tuned(2).id}
        assert adapters.names() == sorted([tuned(1).id, tuned(2).id])
        await adapters.ensure(engine, tuned(3))  # 1 is in use: 2 goes instead
        assert await listed(engine) == {tuned(1).id, tuned(3).id}
        # Not on disk and no blob store to fetch it from: the node cannot serve
        # it now (503: the API may try another node), not the client's fault.
        with pytest.raises(AdapterUnavailable) as missing:
            await adapters.ensure(engine, tuned(9))
        assert missing.value.status == 503
    finally:
        await engine.close()


async def test_a_deleted_model_is_dropped_and_never_loaded_again(adapter: Path, socket: Path,
                                                                 tmp_path: Path) -> None:
    folder = tmp_path / "adapters"
    (folder / "ftjob-left-by-an-earlier-run").mkdir(parents=True)
    adapters = Adapters(metro="fra", folder=folder, blobs=lambda: None)
    assert list(folder.iterdir()) == []  # a cache: it starts empty
    idle, busy = tuned(0), tuned(1).checkpoint(10)
    for model in (idle, busy):
        shutil.copytree(adapter, adapters._folder(model))
    engine = EngineClient(socket)
    try:
        await adapters.ensure(engine, idle)
        adapters.release(idle)
        await adapters.ensure(engine, busy)  # a request still runs on it
        await adapters.drop([idle.id, busy.id], lambda base: engine)
        assert list(folder.iterdir()) == []  # the files go at once
        assert adapters.names() == []
        assert await listed(engine) == {busy.id}  # the weights once nobody uses them
        adapters.release(busy)
        for _ in range(100):
            if not await listed(engine):
                break
            await asyncio.sleep(0.05)
        assert await listed(engine) == set()
        # A late request (the API's view not updated yet) is told it is gone.
        with pytest.raises(AdapterUnavailable) as gone:
            await adapters.ensure(engine, idle)
        assert gone.value.status == 404
    finally:
        await engine.close()
