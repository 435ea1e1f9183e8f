"""GPU hosts for Forge tests: heartbeats as real agents send them, for hosts
this machine does not have.

Each simulated host publishes a hello and then heartbeats on its own node
subjects (``volt.node.<id>.*``), with eight NVML-shaped H100s, its metro,
rack and NVLink domain, over the operator's connection of the cluster's
secured bus, and answers the scheduler's assignments as an agent does (its
heartbeats report the lease it handed its GPUs to). The scheduler cannot
tell them from agents whose engines are down (they serve no model, so Spark
never routes to them). The matching Kubernetes Node objects are
``KubeControlPlane.add_gpu_node``'s.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass

from volt.testing import Cluster
from volt.wire import (
    SCHEDULER,
    GpuInfo,
    Heartbeat,
    NodeAssignment,
    NodeHello,
    encode,
    subjects,
)

GPU_NAME = "NVIDIA H100 80GB HBM3"
INTERVAL_S = 0.5


@dataclass(frozen=True)
class GpuHost:
    node_id: str
    metro: str
    rack: str
    nvlink_domain: str
    gpus: int = 8
    tier: str = "standard"


def _gpus(host: GpuHost) -> list[GpuInfo]:
    return [GpuInfo(index=i, name=GPU_NAME, uuid=f"GPU-{host.node_id}-{i}",
                    memory_total_mib=81559) for i in range(host.gpus)]


class GpuFleet:
    """Runs the hosts' heartbeats on a thread of its own until ``stop``."""

    def __init__(self, cluster: Cluster, hosts: list[GpuHost]) -> None:
        self.cluster = cluster
        self.hosts = hosts
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.handed_over: dict[str, str] = {}
        """Node id -> the lease it reports its GPUs handed to."""
        self.assignments: list[NodeAssignment] = []
        self._thread = threading.Thread(target=self._run, name="gpu-fleet", daemon=True)

    def start(self) -> GpuFleet:
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError(f"the GPU fleet did not connect: {self._error!r}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        try:
            asyncio.run(self._beat())
        except BaseException as exc:  # shown by start() or the test's own waits
            self._error = exc
            self._ready.set()

    async def _beat(self) -> None:
        nc = await self.cluster.connect_bus()

        async def assigned(msg: object) -> None:
            message = SCHEDULER.decode(msg.data)  # type: ignore[attr-defined]
            if isinstance(message, NodeAssignment):
                self.assignments.append(message)
                self.handed_over[message.node_id] = message.lease_id

        try:
            await nc.subscribe(subjects.ASSIGN_ALL, cb=assigned)
            for host in self.hosts:
                await nc.publish(subjects.node_event(host.node_id, "hello"), encode(NodeHello(
                    node_id=host.node_id, metro=host.metro, tier=host.tier, models=[],
                    gpus=_gpus(host), engine="vllm", heartbeat_interval_s=INTERVAL_S,
                    rack=host.rack, nvlink_domain=host.nvlink_domain)))
            seq = 0
            while not self._stop.is_set():
                seq += 1
                for host in self.hosts:
                    await nc.publish(subjects.node_event(host.node_id, "heartbeat"),
                                     encode(Heartbeat(
                                         node_id=host.node_id, metro=host.metro,
                                         tier=host.tier, models=[], gpus=_gpus(host),
                                         engine_ready=False, heartbeat_interval_s=INTERVAL_S,
                                         seq=seq, seal="sealed", rack=host.rack,
                                         nvlink_domain=host.nvlink_domain,
                                         lease_id=self.handed_over.get(host.node_id, ""))))
                await nc.flush()
                self._ready.set()
                await asyncio.sleep(INTERVAL_S)
        finally:
            await nc.close()
