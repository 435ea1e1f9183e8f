"""When a GPU must not take work: one rule, used by the agent (which reports
it) and the scheduler (which drains the node)."""

from __future__ import annotations

from volt.wire import GpuInfo

CRITICAL_XIDS = frozenset({48, 63, 64, 74, 79, 92, 94, 95})
"""XIDs after which a GPU must not take work: 48 double-bit ECC, 63/64 row
remapping events and failures, 74 NVLink error, 79 fallen off the bus, 92 high
single-bit ECC rate, 94/95 contained/uncontained ECC errors (NVIDIA's XID
catalogue; the same set DCGM's health checks and GPU operators drain on)."""


def health_problems(gpu: GpuInfo) -> list[str]:
    """Why this GPU must not take work (empty: healthy)."""
    problems = [f"xid {xid}" for xid in sorted(set(gpu.xids) & CRITICAL_XIDS)]
    if gpu.ecc_uncorrected_volatile:
        problems.append(f"{gpu.ecc_uncorrected_volatile} uncorrectable ECC errors")
    if gpu.remapped_rows_failure:
        problems.append("row remapping failed")
    if gpu.remapped_rows_pending or gpu.retired_pages_pending:
        problems.append("memory repair pending a GPU reset")
    return problems
