"""GPU telemetry from NVML, behind a narrow interface with a first-class fake.

Hosts without an NVIDIA driver (CPU hosts, CI) get ``NoGpus``. Tests that need
GPUs use ``FakeGpus``. NVML errors are translated here and never escape.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from volt.wire import GpuInfo

log = logging.getLogger(__name__)


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
    def __init__(self, nvml: Any) -> None:
        self._nvml = nvml

    def read(self) -> list[GpuInfo]:
        nvml = self._nvml
        gpus = []
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                gpus.append(
                    GpuInfo(
                        index=index,
                        name=str(nvml.nvmlDeviceGetName(handle)),
                        uuid=str(nvml.nvmlDeviceGetUUID(handle)),
                        memory_total_mib=int(memory.total) >> 20,
                        memory_used_mib=int(memory.used) >> 20,
                        utilization_pct=int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu),
                        temperature_c=int(
                            nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
                        ),
                    )
                )
        except nvml.NVMLError as exc:
            log.warning("nvml read failed: %s", exc)
        return gpus


def detect() -> GpuTelemetry:
    """NVML when a driver is present, otherwise no GPUs."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError subclasses, or a missing library
        log.info("no NVIDIA GPUs: %s", type(exc).__name__)
        return NoGpus()
    return NvmlTelemetry(pynvml)
