"""Redfish BMCs for tests: ``sushy-emulator`` processes (the launcher is
shipped with the benchmarks, ``volt/bench/bmcs.py``, which start them too)."""

from volt.bench.bmcs import Bmc

__all__ = ["Bmc"]
