"""GPU telemetry and health from NVML (nvidia-ml-py, ``import pynvml``).

Behind a narrow interface (``GpuTelemetry.read``) with a first-class fake:
hosts without an NVIDIA driver (CPU hosts, CI) get ``NoGpus`` (said once, in
the log, never an error); tests use ``FakeGpus`` or a fake ``pynvml`` module.

One full read of an H200 takes ~75 ms (the ECC and remapped-row calls ~2 ms
each), so ``GpuCollector`` reads in a worker thread on its own interval and
heartbeats carry its latest reading; the event loop never waits on NVML.
Every call tolerates ``NotSupported`` (NVLink state, fans and NUMA answer it
inside VMs): the reading names what the GPU did not answer instead of failing.

XID errors arrive as NVML events (``nvmlEventTypeXidCriticalError``), watched
by a thread of their own. A GPU with a critical XID or uncorrectable memory
errors is unhealthy (``health_problems``), and the scheduler takes its node
out of placement until the agent restarts (after the GPU was reset).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from volt.gpu_health import health_problems
from volt.wire import GpuInfo

__all__ = ["GpuCollector", "GpuTelemetry", "health_problems"]

log = logging.getLogger(__name__)
T = TypeVar("T")

THROTTLE_REASONS = {
    0x1: "gpu_idle", 0x2: "applications_clocks", 0x4: "sw_power_cap", 0x8: "hw_slowdown",
    0x10: "sync_boost", 0x20: "sw_thermal", 0x40: "hw_thermal", 0x80: "hw_power_brake",
    0x100: "display_clocks",
}


class GpuTelemetry(Protocol):
    def read(self) -> list[GpuInfo]: ...


class NoGpus:
    def read(self) -> list[GpuInfo]:
        return []


class FakeGpus:
    def __init__(self, gpus: list[GpuInfo]) -> None:
        self.gpus = gpus

    def read(self) -> list[GpuInfo]:
        return list(self.gpus)


class NvmlTelemetry:
    """Reads every GPU through NVML (``nvml``: the ``pynvml`` module or a fake)."""

    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml
        self._xids: dict[int, list[int]] = {}
        self._lock = threading.Lock()
        self._watching = False

    def _try(self, missing: list[str], name: str, call: Callable[[], T], default: T) -> T:
        try:
            return call()
        except self._nvml.NVMLError as exc:
            if not isinstance(exc, self._nvml.NVMLError_NotSupported):
                log.debug("nvml %s failed: %s", name, exc)
            missing.append(name)
            return default

    def read(self) -> list[GpuInfo]:
        nvml = self._nvml
        try:
            count = nvml.nvmlDeviceGetCount()
        except nvml.NVMLError as exc:
            log.warning("nvml read failed: %s", exc)
            return []
        return [self._read_one(index) for index in range(count)]

    def _read_one(self, index: int) -> GpuInfo:
        nvml = self._nvml
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        missing: list[str] = []

        def get(name: str, call: Callable[[], T], default: T) -> T:
            return self._try(missing, name, call, default)

        memory = get("memory", lambda: nvml.nvmlDeviceGetMemoryInfo(handle), None)
        utilization = get("utilization", lambda: nvml.nvmlDeviceGetUtilizationRates(handle), None)
        reasons = get("clock_event_reasons",
                      lambda: nvml.nvmlDeviceGetCurrentClocksEventReasons(handle), 0)
        remapped = get("remapped_rows", lambda: nvml.nvmlDeviceGetRemappedRows(handle), None)
        def link_state(link: int) -> Any:
            return get(f"nvlink_{link}", lambda: nvml.nvmlDeviceGetNvLinkState(handle, link),
                       None)

        links = [link_state(link) for link in range(nvml.NVML_NVLINK_MAX_LINKS)]
        nvlinks = [state for state in links if state is not None]
        missing = [m for m in missing if not m.startswith("nvlink_")] + (
            ["nvlink"] if not nvlinks else [])
        mig = get("mig_mode", lambda: nvml.nvmlDeviceGetMigMode(handle), None)

        def ecc(kind: int, counter: int, name: str) -> int:
            return int(get(name, lambda: nvml.nvmlDeviceGetTotalEccErrors(
                handle, kind, counter), 0))

        with self._lock:
            xids = list(self._xids.get(index, ()))
        return GpuInfo(
            index=index,
            name=str(get("name", lambda: nvml.nvmlDeviceGetName(handle), "")),
            uuid=str(get("uuid", lambda: nvml.nvmlDeviceGetUUID(handle), "")),
            serial=str(get("serial", lambda: nvml.nvmlDeviceGetSerial(handle), "")),
            memory_total_mib=int(memory.total) >> 20 if memory else 0,
            memory_used_mib=int(memory.used) >> 20 if memory else 0,
            utilization_pct=int(utilization.gpu) if utilization else 0,
            temperature_c=int(get("temperature", lambda: nvml.nvmlDeviceGetTemperature(
                handle, nvml.NVML_TEMPERATURE_GPU), 0)),
            power_w=get("power", lambda: nvml.nvmlDeviceGetPowerUsage(handle), 0) / 1000,
            power_limit_w=get("power_limit",
                              lambda: nvml.nvmlDeviceGetEnforcedPowerLimit(handle), 0) / 1000,
            energy_j=get("energy", lambda: nvml.nvmlDeviceGetTotalEnergyConsumption(handle),
                         0) // 1000,
            sm_clock_mhz=int(get("sm_clock", lambda: nvml.nvmlDeviceGetClockInfo(
                handle, nvml.NVML_CLOCK_SM), 0)),
            memory_clock_mhz=int(get("memory_clock", lambda: nvml.nvmlDeviceGetClockInfo(
                handle, nvml.NVML_CLOCK_MEM), 0)),
            throttle_reasons=[name for bit, name in THROTTLE_REASONS.items() if reasons & bit],
            ecc_enabled=bool(get("ecc_mode", lambda: nvml.nvmlDeviceGetCurrentEccMode(handle),
                                 0)),
            ecc_corrected_volatile=ecc(nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
                                       nvml.NVML_VOLATILE_ECC, "ecc_corrected"),
            ecc_uncorrected_volatile=ecc(nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                         nvml.NVML_VOLATILE_ECC, "ecc_uncorrected"),
            ecc_uncorrected_aggregate=ecc(nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
                                          nvml.NVML_AGGREGATE_ECC, "ecc_uncorrected_aggregate"),
            remapped_rows_correctable=int(remapped[0]) if remapped else 0,
            remapped_rows_uncorrectable=int(remapped[1]) if remapped else 0,
            remapped_rows_pending=bool(remapped[2]) if remapped else False,
            remapped_rows_failure=bool(remapped[3]) if remapped else False,
            retired_pages_pending=bool(get(
                "retired_pages_pending",
                lambda: nvml.nvmlDeviceGetRetiredPagesPendingStatus(handle), 0)),
            pcie_generation=int(get("pcie_generation",
                                    lambda: nvml.nvmlDeviceGetCurrPcieLinkGeneration(handle), 0)),
            pcie_width=int(get("pcie_width",
                               lambda: nvml.nvmlDeviceGetCurrPcieLinkWidth(handle), 0)),
            pcie_replays=int(get("pcie_replays",
                                 lambda: nvml.nvmlDeviceGetPcieReplayCounter(handle), 0)),
            mig_enabled=bool(mig[0]) if mig else False,
            nvlink_up=sum(1 for state in nvlinks if state),
            nvlink_links=len(nvlinks),
            xids=xids,
            not_supported=sorted(missing),
        )

    # -- XID events ------------------------------------------------------------

    def watch_xids(self, stop: threading.Event, timeout_ms: int = 500) -> None:
        """Collect XID events until ``stop`` (run in a thread of its own)."""
        nvml = self._nvml
        try:
            events = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            log.info("no NVML events: %s", exc)
            return
        registered = 0
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlDeviceRegisterEvents(handle, nvml.nvmlEventTypeXidCriticalError, events)
                registered += 1
        self._watching = registered > 0
        try:
            while registered and not stop.is_set():
                try:
                    data = nvml.nvmlEventSetWait_v2(events, timeout_ms)
                except nvml.NVMLError_Timeout:
                    continue
                except nvml.NVMLError as exc:
                    log.warning("nvml event wait failed: %s", exc)
                    time.sleep(timeout_ms / 1000)
                    continue
                index = int(nvml.nvmlDeviceGetIndex(data.device))
                xid = int(data.eventData)
                log.error("gpu xid", extra={"gpu": index, "xid": xid})
                with self._lock:
                    self._xids.setdefault(index, []).append(xid)
        finally:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlEventSetFree(events)


class GpuCollector:
    """The latest reading, refreshed off the event loop every ``interval_s``."""

    def __init__(self, telemetry: GpuTelemetry, *, interval_s: float = 5.0) -> None:
        self.telemetry = telemetry
        self.interval_s = interval_s
        self.latest: list[GpuInfo] = []
        self.read_s = 0.0
        """How long the last full read took."""

    async def refresh(self) -> list[GpuInfo]:
        started = time.perf_counter()
        self.latest = await asyncio.to_thread(self.telemetry.read)
        self.read_s = time.perf_counter() - started
        return self.latest

    async def run(self) -> None:
        stop = threading.Event()
        watcher = None
        if isinstance(self.telemetry, NvmlTelemetry):
            watcher = asyncio.create_task(asyncio.to_thread(self.telemetry.watch_xids, stop))
        try:
            while True:
                try:
                    await self.refresh()
                except Exception as exc:  # a driver hiccup: keep the last reading
                    log.warning("gpu read failed: %s", type(exc).__name__)
                await asyncio.sleep(self.interval_s)
        finally:
            stop.set()
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher


def detect() -> GpuTelemetry:
    """NVML when a driver is present; otherwise no GPUs, said once."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses, or a missing library
        log.info("no NVIDIA GPUs on this host (NVML: %s); reporting zero GPUs",
                 type(exc).__name__)
        return NoGpus()
    return NvmlTelemetry(pynvml)
