"""A node's GPUs go to a Forge lease and come back: a real nats-server, the
agent in process, its engine a real child process under its supervisor, and
GPUs read through the telemetry fake (whose memory decides when Spark may
start again)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nats
import psutil
import pytest
from nats.aio.client import Client

from volt.agent import service
from volt.agent.engine.client import EngineClient
from volt.agent.engine.supervisor import EngineSupervisor
from volt.agent.service import Agent, EngineHandle
from volt.agent.telemetry import FakeGpus
from volt.testing.engine import MODEL_ID
from volt.up.nats_server import NatsServer
from volt.wire import NODE, GpuInfo, Heartbeat, NodeAssignment, encode, subjects


@dataclass
class Node:
    agent: Agent
    supervisor: EngineSupervisor
    gpus: list[GpuInfo]
    nc: Client
    heartbeats: asyncio.Queue[Heartbeat]

    async def beat(self, until: object, timeout_s: float = 30) -> Heartbeat:
        """The first heartbeat for which ``until(heartbeat)`` holds."""
        async with asyncio.timeout(timeout_s):
            while True:
                heartbeat = await self.heartbeats.get()
                if until(heartbeat):  # type: ignore[operator]
                    return heartbeat

    async def assign(self, lease_id: str) -> None:
        await self.nc.publish(subjects.assignment("gpu-1"), encode(
            NodeAssignment(node_id="gpu-1", lease_id=lease_id)))


@pytest.fixture
async def node(tiny_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
               ) -> AsyncIterator[Node]:
    monkeypatch.setattr(service, "GPU_MEMORY_POLL_S", 0.1)
    with NatsServer(store_dir=tmp_path / "nats") as server:
        socket = tmp_path / "engine.sock"
        supervisor = EngineSupervisor(
            [sys.executable, "-m", "volt.agent.engine.cpu_server", "--socket", str(socket),
             "--model-dir", str(tiny_model), "--model-id", MODEL_ID, "--mode", "instant"],
            EngineClient(socket), sealed=False, startup_timeout_s=60)
        gpus = [GpuInfo(index=i, name="NVIDIA H100 80GB HBM3", uuid=f"GPU-{i}",
                        memory_total_mib=81559, memory_used_mib=0) for i in range(8)]
        agent = Agent(node_id="gpu-1", metro="fra", tier="standard",
                      engines=[EngineHandle(MODEL_ID, supervisor.client, supervisor.ready,
                                            pause=supervisor.pause, resume=supervisor.resume,
                                            stopped=supervisor.stopped)],
                      telemetry=FakeGpus(gpus), heartbeat_interval_s=0.1, insecure=True)
        agent_nc = await nats.connect(server.url)
        nc = await nats.connect(server.url)
        heartbeats: asyncio.Queue[Heartbeat] = asyncio.Queue()

        async def heard(msg: object) -> None:
            message = NODE.decode(msg.data)  # type: ignore[attr-defined]
            if isinstance(message, Heartbeat):
                heartbeats.put_nowait(message)

        await nc.subscribe(subjects.node_event("gpu-1", "heartbeat"), cb=heard)
        tasks = [asyncio.create_task(supervisor.run()), asyncio.create_task(agent.run(agent_nc))]
        try:
            yield Node(agent, supervisor, gpus, nc, heartbeats)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await supervisor.client.close()
            await nc.close()
            await agent_nc.close()


async def test_the_engine_stops_for_a_lease_and_returns_once_gpu_memory_is_free(
        node: Node) -> None:
    await node.beat(lambda h: h.models == [MODEL_ID])
    first_pid = node.supervisor.pid

    await node.assign("lease-abc")
    handed = await node.beat(lambda h: h.lease_id == "lease-abc")
    assert handed.models == []  # Spark routes nothing here
    assert node.supervisor.stopped.is_set()
    assert first_pid is not None
    assert not psutil.pid_exists(first_pid)  # the engine, and its GPU memory, gone
    restarts = node.supervisor.restarts

    # The tenant's pods are gone, but one GPU still holds memory: Spark waits.
    node.gpus[3] = GpuInfo(index=3, name="NVIDIA H100 80GB HBM3", uuid="GPU-3",
                           memory_total_mib=81559, memory_used_mib=40_000)
    await node.assign("")
    for _ in range(5):
        held = await node.beat(lambda h: True)
        assert held.lease_id == "lease-abc"
        assert held.models == []
    node.gpus[3] = GpuInfo(index=3, name="NVIDIA H100 80GB HBM3", uuid="GPU-3",
                           memory_total_mib=81559, memory_used_mib=300)
    back = await node.beat(lambda h: h.lease_id == "" and h.models == [MODEL_ID])
    assert back.engine_ready
    assert node.supervisor.pid != first_pid
    assert node.supervisor.restarts == restarts  # a handover is not a crash


async def test_repeated_assignments_are_idempotent(node: Node) -> None:
    await node.beat(lambda h: h.models == [MODEL_ID])
    for _ in range(3):
        await node.assign("lease-abc")
    await node.beat(lambda h: h.lease_id == "lease-abc")
    for _ in range(3):
        await node.assign("")
    await node.beat(lambda h: h.lease_id == "" and h.models == [MODEL_ID])
