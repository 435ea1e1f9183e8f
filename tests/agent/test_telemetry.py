"""GPU telemetry and health: NVML read through a faithful fake (the real one
runs on a GPU host: the node-trust issue's note has its output), XID events,
and the scheduler draining a node whose GPU must not take work."""

from __future__ import annotations

import asyncio
import threading

import pytest
from support.fake_nvml import FakeGpu, FakeNvml

from volt.agent.telemetry import GpuCollector, NvmlTelemetry, detect, health_problems
from volt.placement import DEFAULT_POLICY, PlacementQuery
from volt.scheduler.node_states import NodeState
from volt.scheduler.node_table import NodeTable
from volt.wire import Heartbeat


def test_a_full_read_names_what_the_gpu_does_not_support() -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(uuid="GPU-2", unsupported={"nvlink", "serial"})])
    first, second = NvmlTelemetry(nvml.module).read()
    assert first.name == "NVIDIA H200"
    assert first.memory_total_mib == 143771
    assert first.power_w == 76.0
    assert first.power_limit_w == 700.0
    assert first.throttle_reasons == ["gpu_idle"]
    assert first.pcie_generation == 5
    assert first.not_supported == ["nvlink"]
    assert second.serial == ""
    assert second.not_supported == ["nvlink", "serial"]
    assert health_problems(first) == []


def test_critical_xids_and_uncorrectable_ecc_make_a_gpu_unhealthy() -> None:
    nvml = FakeNvml([FakeGpu(), FakeGpu(ecc_uncorrected=2)])
    telemetry = NvmlTelemetry(nvml.module)
    stop = threading.Event()
    watcher = threading.Thread(target=telemetry.watch_xids, args=(stop, 50))
    watcher.start()
    try:
        nvml.inject_xid(0, 13)  # a graphics engine exception: the application's fault
        nvml.inject_xid(0, 79)  # fallen off the bus
        for _ in range(100):
            gpus = telemetry.read()
            if gpus[0].xids == [13, 79]:
                break
            stop.wait(0.02)
    finally:
        stop.set()
        watcher.join(5)
    assert gpus[0].xids == [13, 79]
    assert health_problems(gpus[0]) == ["xid 79"]
    assert health_problems(gpus[1]) == ["2 uncorrectable ECC errors"]


def test_an_unhealthy_gpu_drains_its_node_until_it_is_healthy_again() -> None:
    table = NodeTable()
    healthy = NvmlTelemetry(FakeNvml([FakeGpu()]).module).read()
    sick = NvmlTelemetry(FakeNvml([FakeGpu(remapped=(0, 1, 0, 1))]).module).read()

    def beat(gpus: list) -> None:  # type: ignore[type-arg]
        table.observe(Heartbeat(node_id="gpu-1", metro="fra", tier="standard",
                                models=["m"], gpus=gpus, seal="sealed"))

    beat(healthy)
    assert table.get("gpu-1").state is NodeState.READY  # type: ignore[union-attr]
    beat(sick)
    record = table.get("gpu-1")
    assert record is not None
    assert record.state is NodeState.UNHEALTHY
    decision = DEFAULT_POLICY.place(PlacementQuery(model="m"), table.views(), explain=True)
    assert decision.node is None
    assert "row remapping failed" in decision.rejected["gpu-1"]
    beat(healthy)
    assert table.get("gpu-1").state is NodeState.READY  # type: ignore[union-attr]


async def test_the_collector_reads_off_the_event_loop() -> None:
    collector = GpuCollector(NvmlTelemetry(FakeNvml([FakeGpu()]).module), interval_s=60)
    gpus = await collector.refresh()
    assert [g.uuid for g in gpus] == ["GPU-6c3a1f0e-0000-0000-0000-000000000001"]
    assert collector.latest == gpus
    running = asyncio.create_task(collector.run())
    await asyncio.sleep(0.05)
    running.cancel()


def test_a_host_without_nvml_reports_no_gpus() -> None:
    telemetry = detect()
    if isinstance(telemetry, NvmlTelemetry):
        pytest.skip("this host has an NVIDIA driver")
    assert telemetry.read() == []
