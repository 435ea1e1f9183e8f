"""A small, faithful stand-in for ``pynvml`` (nvidia-ml-py), for hosts with no GPU.

It answers the calls Volt makes the way the real library does on the H200
measured for the node-trust issue (driver 580, in a VM): values for memory,
utilisation, power, clocks, ECC, remapped rows and PCIe; ``NotSupported`` for
NVLink state (and anything a test marks unsupported); XID events through an
event set that a test feeds with ``inject_xid``.
"""

from __future__ import annotations

import queue
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any


class NVMLError(Exception):
    pass


class NVMLError_NotSupported(NVMLError):
    pass


class NVMLError_Timeout(NVMLError):
    pass


NVML_TEMPERATURE_GPU = 0
NVML_CLOCK_SM = 1
NVML_CLOCK_MEM = 2
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_AGGREGATE_ECC = 1
NVML_NVLINK_MAX_LINKS = 18
nvmlEventTypeXidCriticalError = 8


@dataclass
class FakeGpu:
    name: str = "NVIDIA H200"
    uuid: str = "GPU-6c3a1f0e-0000-0000-0000-000000000001"
    serial: str = "1654123456789"
    memory_total: int = 143771 << 20
    memory_used: int = 512 << 20
    utilization: int = 0
    temperature: int = 31
    power_mw: int = 76_000
    power_limit_mw: int = 700_000
    energy_mj: int = 9_000_000
    clock_reasons: int = 0x1  # idle
    ecc_corrected: int = 0
    ecc_uncorrected: int = 0
    remapped: tuple[int, int, int, int] = (0, 0, 0, 0)
    unsupported: set[str] = field(default_factory=lambda: {"nvlink"})


class FakeNvml:
    """Use ``FakeNvml([FakeGpu(), ...]).module`` where ``pynvml`` would go."""

    def __init__(self, gpus: list[FakeGpu]) -> None:
        self.gpus = gpus
        self.events: queue.Queue[tuple[int, int]] = queue.Queue()
        self.module = self._module()

    def inject_xid(self, index: int, xid: int) -> None:
        self.events.put((index, xid))

    def _module(self) -> Any:
        gpus = self.gpus

        def gpu(handle: int, feature: str) -> FakeGpu:
            if feature in gpus[handle].unsupported:
                raise NVMLError_NotSupported(feature)
            return gpus[handle]

        def wait(event_set: object, timeout_ms: int) -> Any:
            try:
                index, xid = self.events.get(timeout=timeout_ms / 1000)
            except queue.Empty:
                raise NVMLError_Timeout("timeout") from None
            return SimpleNamespace(device=index, eventData=xid,
                                   eventType=nvmlEventTypeXidCriticalError)

        return SimpleNamespace(
            NVMLError=NVMLError, NVMLError_NotSupported=NVMLError_NotSupported,
            NVMLError_Timeout=NVMLError_Timeout, NVML_TEMPERATURE_GPU=NVML_TEMPERATURE_GPU,
            NVML_CLOCK_SM=NVML_CLOCK_SM, NVML_CLOCK_MEM=NVML_CLOCK_MEM,
            NVML_MEMORY_ERROR_TYPE_CORRECTED=NVML_MEMORY_ERROR_TYPE_CORRECTED,
            NVML_MEMORY_ERROR_TYPE_UNCORRECTED=NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            NVML_VOLATILE_ECC=NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC=NVML_AGGREGATE_ECC,
            NVML_NVLINK_MAX_LINKS=NVML_NVLINK_MAX_LINKS,
            nvmlEventTypeXidCriticalError=nvmlEventTypeXidCriticalError,
            nvmlDeviceGetCount=lambda: len(gpus),
            nvmlDeviceGetHandleByIndex=lambda i: i,
            nvmlDeviceGetIndex=lambda h: h,
            nvmlDeviceGetName=lambda h: gpu(h, "name").name,
            nvmlDeviceGetUUID=lambda h: gpu(h, "uuid").uuid,
            nvmlDeviceGetSerial=lambda h: gpu(h, "serial").serial,
            nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(
                total=gpu(h, "memory").memory_total, used=gpu(h, "memory").memory_used),
            nvmlDeviceGetUtilizationRates=lambda h: SimpleNamespace(
                gpu=gpu(h, "utilization").utilization, memory=0),
            nvmlDeviceGetTemperature=lambda h, sensor: gpu(h, "temperature").temperature,
            nvmlDeviceGetPowerUsage=lambda h: gpu(h, "power").power_mw,
            nvmlDeviceGetEnforcedPowerLimit=lambda h: gpu(h, "power_limit").power_limit_mw,
            nvmlDeviceGetTotalEnergyConsumption=lambda h: gpu(h, "energy").energy_mj,
            nvmlDeviceGetClockInfo=lambda h, clock: 1980 if clock == NVML_CLOCK_SM else 3201,
            nvmlDeviceGetCurrentClocksEventReasons=lambda h: gpu(h, "clocks").clock_reasons,
            nvmlDeviceGetCurrentEccMode=lambda h: 1,
            nvmlDeviceGetTotalEccErrors=lambda h, kind, counter: (
                gpu(h, "ecc").ecc_uncorrected if kind == NVML_MEMORY_ERROR_TYPE_UNCORRECTED
                else gpu(h, "ecc").ecc_corrected),
            nvmlDeviceGetRemappedRows=lambda h: gpu(h, "remapped").remapped,
            nvmlDeviceGetRetiredPagesPendingStatus=lambda h: 0,
            nvmlDeviceGetCurrPcieLinkGeneration=lambda h: 5,
            nvmlDeviceGetCurrPcieLinkWidth=lambda h: 16,
            nvmlDeviceGetPcieReplayCounter=lambda h: 0,
            nvmlDeviceGetMigMode=lambda h: (0, 0),
            nvmlDeviceGetNvLinkState=lambda h, link: gpu(h, "nvlink") and 1,
            nvmlEventSetCreate=lambda: object(),
            nvmlEventSetFree=lambda event_set: None,
            nvmlDeviceRegisterEvents=lambda h, types, event_set: None,
            nvmlEventSetWait_v2=wait,
        )
