"""``volt bench sched``: lease placements per second on a simulated fleet, and
how much capacity best fit keeps whole compared with first fit.

The fleet is N nodes of 8 GPUs across five metros, two tiers and two GPU
models, four nodes to an NVLink domain and sixteen to a rack. A seeded
random sequence of lease requests (1, 2, 4 or 8 GPUs, now and then 16 or 32)
and releases keeps the fleet about three-quarters leased. Timed: the
scheduler's own work per request (``GpuPool.place`` then ``allocate``, or a
release), in process; the bus and the store are not part of it.

Fragmentation is the fraction of free GPUs that a whole-node (8-GPU) lease
can use, sampled through the sequence, for best fit (Volt's) and first fit
run on the same sequence.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from volt.bench.report import header, progress, write
from volt.placement.gpus import GpuNode, GpuPlacement, GpuPool, GpuRequest, Unplaceable

METROS = ("fra", "ams", "par", "waw", "mad")
TIERS = ("standard", "premium")
MODELS = ("H100", "H200")
SIZES = (1, 1, 2, 2, 4, 4, 8, 8, 8, 16, 32)
TARGET_LOAD = 0.75


def simulated_fleet(nodes: int) -> GpuPool:
    pool = GpuPool()
    for i in range(nodes):
        rack = i // 16
        pool.set_node(GpuNode(
            node_id=f"node-{i:05}", metro=METROS[rack % len(METROS)],
            tier=TIERS[(rack // len(METROS)) % len(TIERS)],
            gpu_model=MODELS[(rack // (len(METROS) * len(TIERS))) % len(MODELS)],
            gpus=8, nvlink_domain=f"nvl-{i // 4}", rack=f"rack-{rack}"))
    return pool


def _run(pool: GpuPool, operations: int, seed: int, first_fit: bool
         ) -> dict[str, Any]:
    rng = random.Random(seed)
    place: Callable[[GpuRequest], GpuPlacement] = (
        pool.place_first_fit if first_fit else pool.place)
    total = 8 * len(pool)
    leased = 0
    live: list[GpuPlacement] = []
    placed = refused = released = 0
    samples: list[float] = []
    busy_s = 0.0
    for op in range(operations):
        release = live and (leased / total > TARGET_LOAD or rng.random() < 0.3)
        if release:
            placement = live.pop(rng.randrange(len(live)))
            start = time.perf_counter()
            pool.release(placement)
            busy_s += time.perf_counter() - start
            leased -= placement.count
            released += 1
        else:
            request = GpuRequest(gpu_model=rng.choice(MODELS), count=rng.choice(SIZES),
                                 metro=rng.choice(METROS),
                                 tier=rng.choice((None, *TIERS)))
            start = time.perf_counter()
            try:
                placement = place(request)
                pool.allocate(placement)
            except Unplaceable:
                refused += 1
            else:
                live.append(placement)
                leased += placement.count
                placed += 1
            busy_s += time.perf_counter() - start
        # Sampled once the fleet is as full as it gets (the fill-up says nothing).
        if op % 250 == 249 and leased / total >= TARGET_LOAD - 0.05:
            samples.append(pool.usable_by_whole_node())
    return {
        "operations": operations, "placed": placed, "refused": refused,
        "released": released, "seconds": round(busy_s, 3),
        "decisions_per_s": round((placed + refused + released) / busy_s),
        "leased_fraction": round(leased / total, 3),
        "usable_by_8gpu_lease": round(sum(samples) / len(samples), 3) if samples else None,
    }


def run_sched(*, fleets: list[int], operations: int, seed: int,
              json_path: Path | None) -> dict[str, Any]:
    report = header("sched", {"fleets": fleets, "operations": operations, "seed": seed,
                              "target_load": TARGET_LOAD, "sizes": list(SIZES)})
    report["results"] = []
    for nodes in fleets:
        row: dict[str, Any] = {"nodes": nodes}
        # First fit scans the fleet per request, so both run the same shorter
        # sequence for the fragmentation comparison; best fit's speed is then
        # measured again over the full sequence.
        compare_ops = min(operations, 30000)
        for name, first_fit in (("best_fit", False), ("first_fit", True)):
            progress(f"{nodes} nodes, {name}: {compare_ops} operations")
            row[name] = _run(simulated_fleet(nodes), compare_ops, seed, first_fit)
        if operations > compare_ops:
            progress(f"{nodes} nodes, best_fit: {operations} operations")
            row["best_fit_long"] = _run(simulated_fleet(nodes), operations, seed, False)
        report["results"].append(row)
    print(f"{'nodes':>7} {'policy':>13} {'decisions/s':>12} {'placed':>7} {'refused':>8} "
          f"{'leased':>7} {'usable by 8-GPU lease':>22}")
    for row in report["results"]:
        for name in ("best_fit", "first_fit", "best_fit_long"):
            if name not in row:
                continue
            r = row[name]
            print(f"{row['nodes']:>7} {name:>13} {r['decisions_per_s']:>12} {r['placed']:>7} "
                  f"{r['refused']:>8} {r['leased_fraction']:>7} "
                  f"{r['usable_by_8gpu_lease']:>22}")
    write(report, json_path)
    return report
