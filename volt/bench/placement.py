"""``volt bench placement``: routing from the published view vs asking the scheduler.

Both answer the same question with the same policy: the API replica places
from its copy of the scheduler's view (in process), or asks the scheduler over
NATS (``volt.sched.place``). A real scheduler holds N synthetic nodes fed by
real heartbeats.
"""

from __future__ import annotations

import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import uvloop

from volt.bench.loadgen import percentile
from volt.control_api.routing import Router
from volt.placement import PlacementQuery
from volt.wire import (
    SCHEDULER,
    EngineLoad,
    Heartbeat,
    PlaceAnswer,
    PlaceQuery,
    encode,
    subjects,
)

METROS = ("fra", "ams", "par", "waw", "mad")


async def _heartbeats(nc: Any, nodes: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        for i in range(nodes):
            await nc.publish(subjects.node_event(f"node-{i}", "heartbeat"), encode(Heartbeat(
                node_id=f"node-{i}", metro=METROS[i % len(METROS)], tier="standard",
                models=["volt-tiny"], load=EngineLoad(running=i % 7), heartbeat_interval_s=5.0,
                inflight_by_replica={"another-api": i % 7} if i % 7 else {}, seal="sealed",
            )))
        await asyncio.sleep(0.5)


async def _measure(url: str, nodes: int, decisions: int, concurrency: int) -> dict[str, Any]:
    nc = await nats.connect(url)
    stop = asyncio.Event()
    feeder = asyncio.create_task(_heartbeats(nc, nodes, stop))
    router = Router()
    await router.attach(nc)
    deadline = time.monotonic() + 20
    while sum(n.state == "ready" for n in router.nodes) < nodes:
        if time.monotonic() > deadline:
            raise RuntimeError("the scheduler never reported every node ready")
        await asyncio.sleep(0.05)
        await router.refresh()

    query = PlacementQuery(model="volt-tiny", metros=frozenset({"fra", "ams"}))
    wire_query = encode(PlaceQuery(model="volt-tiny", metros=["fra", "ams"]))
    results: dict[str, Any] = {"nodes": nodes}

    view = []
    for i in range(decisions):
        started = time.perf_counter()
        router.place(query)
        view.append((time.perf_counter() - started) * 1e6)
        if i % 500 == 0:
            await asyncio.sleep(0)  # let heartbeats and view updates through
    busy = 0.0
    for i in range(decisions):
        started = time.perf_counter()
        router.place(query)
        busy += time.perf_counter() - started
        if i % 500 == 0:
            await asyncio.sleep(0)
    results["view"] = {"p50_us": percentile(view, 50), "p99_us": percentile(view, 99),
                       "decisions_per_s": decisions / busy}

    async def ask() -> float:
        started = time.perf_counter()
        reply = await nc.request(subjects.SCHED_PLACE, wire_query, timeout=5)
        answer = SCHEDULER.decode(reply.data)
        if not isinstance(answer, PlaceAnswer) or answer.node_id is None:
            raise RuntimeError(f"the scheduler placed nothing: {answer}")
        return (time.perf_counter() - started) * 1e6

    asked = [await ask() for _ in range(min(decisions, 2000))]
    count = min(decisions, 4000)
    left = [count]

    async def worker() -> None:
        while left[0] > 0:
            left[0] -= 1
            await ask()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    results["ask"] = {"p50_us": percentile(asked, 50), "p99_us": percentile(asked, 99),
                      "decisions_per_s": count / (time.perf_counter() - started)}
    stop.set()
    await feeder
    await nc.close()
    return results


def run_placement(*, nodes: int, decisions: int, concurrency: int,
                  json_path: Path | None) -> dict[str, Any]:
    from volt.testing import Cluster

    with tempfile.TemporaryDirectory(prefix="volt-bench-") as tmp, Cluster(Path(tmp)) as cluster:
        print("starting NATS and the scheduler…", file=sys.stderr, flush=True)
        results = uvloop.run(_measure(cluster.nats.url, nodes, decisions, concurrency))
    view, ask = results["view"], results["ask"]
    print(f"Placement of one request among {nodes} nodes (2 metros allowed):\n")
    print("| mode | p50 µs | p99 µs | decisions/s |")
    print("|---|---:|---:|---:|")
    print(f"| route from the published view (in the API) | {view['p50_us']:.1f} | "
          f"{view['p99_us']:.1f} | {view['decisions_per_s']:,.0f} |")
    print(f"| ask the scheduler per request (NATS request/reply, c={concurrency}) | "
          f"{ask['p50_us']:.0f} | {ask['p99_us']:.0f} | {ask['decisions_per_s']:,.0f} |")
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps({"bench": "placement", **results}, indent=2) + "\n")
    return results
