"""``volt bench overhead``: the latency and throughput that Volt itself adds.

The same chat requests go (a) straight to the engine over its Unix socket and
(b) through the whole Volt path (HTTP → API → NATS → agent → engine and back),
with the engine in ``instant`` mode (fixed tokens, no model) so that only
Volt is measured. The stack is the real one, in child processes; the API runs
once per ASGI server (``api.server``), so both are measured in the same run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

from volt.agent.engine.tiny_model import MODEL_ID
from volt.bench.loadgen import Run, Target, chat_body, closed_loop, percentile

TARGETS = {
    "c1_added_p50_ms": 1.0,
    "c64_rps_nonstream": 2000.0,
    "c64_rps_stream": 1000.0,
}


@dataclass
class Row:
    path: str
    mode: str
    concurrency: int
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p99_ms: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None


def _row(path: str, stream: bool, concurrency: int, run: Run) -> Row:
    latencies = [s.latency_s * 1000 for s in run.ok]
    ttfts = [s.ttft_s * 1000 for s in run.ok if s.ttft_s is not None]
    return Row(
        path=path, mode="stream" if stream else "non-stream", concurrency=concurrency,
        requests=len(run.samples), failures=run.failures, rps=round(run.rps, 1),
        p50_ms=round(percentile(latencies, 50), 3), p99_ms=round(percentile(latencies, 99), 3),
        ttft_p50_ms=round(percentile(ttfts, 50), 3) if stream else None,
        ttft_p99_ms=round(percentile(ttfts, 99), 3) if stream else None,
    )


async def measure(targets: list[Target], *, tokens: int, concurrencies: list[int],
                  sequential_requests: int, duration_s: float) -> list[Row]:
    rows = []
    for stream in (False, True):
        body = chat_body(MODEL_ID, tokens, stream)
        for concurrency in concurrencies:
            for target in targets:
                if concurrency == 1:
                    run = await closed_loop(target, body, stream=stream, concurrency=1,
                                            requests=sequential_requests)
                else:
                    run = await closed_loop(target, body, stream=stream,
                                            concurrency=concurrency, duration_s=duration_s)
                rows.append(_row(target.name, stream, concurrency, run))
                print(f"  {rows[-1].path:14} {rows[-1].mode:10} c={concurrency:<3} "
                      f"{rows[-1].rps:8.1f} req/s", file=sys.stderr, flush=True)
    return rows


def added(rows: list[Row]) -> list[dict[str, Any]]:
    """Each Volt path minus the engine, per mode and concurrency."""
    out = []
    index = {(r.path, r.mode, r.concurrency): r for r in rows}
    for (path, mode, concurrency), volt in index.items():
        if path == "engine" or (engine := index.get(("engine", mode, concurrency))) is None:
            continue
        entry: dict[str, Any] = {
            "path": path, "mode": mode, "concurrency": concurrency,
            "added_p50_ms": round(volt.p50_ms - engine.p50_ms, 3),
            "added_p99_ms": round(volt.p99_ms - engine.p99_ms, 3),
        }
        if mode == "stream" and volt.ttft_p50_ms is not None and engine.ttft_p50_ms is not None:
            entry["added_ttft_p50_ms"] = round(volt.ttft_p50_ms - engine.ttft_p50_ms, 3)
            entry["added_ttft_p99_ms"] = round(
                (volt.ttft_p99_ms or 0) - (engine.ttft_p99_ms or 0), 3
            )
        out.append(entry)
    return out


def check_targets(rows: list[Row], deltas: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets, for each Volt path measured."""
    result: dict[str, Any] = {}
    for path in sorted({r.path for r in rows} - {"engine"}):
        def rps(mode: str, concurrency: int, path: str = path) -> float | None:
            return next((r.rps for r in rows
                         if (r.path, r.mode, r.concurrency) == (path, mode, concurrency)), None)

        c1 = next((d["added_p50_ms"] for d in deltas
                   if (d["path"], d["mode"], d["concurrency"]) == (path, "non-stream", 1)), None)
        measured = {
            "c1_added_p50_ms": c1,
            "c64_rps_nonstream": rps("non-stream", 64),
            "c64_rps_stream": rps("stream", 64),
        }
        result[path] = {}
        for name, goal in TARGETS.items():
            value = measured[name]
            met = None if value is None else (
                value <= goal if name.endswith("_ms") else value >= goal
            )
            result[path][name] = {"goal": goal, "measured": value, "met": met}
    return result


def render(rows: list[Row], deltas: list[dict[str, Any]], targets: dict[str, Any]) -> str:
    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    lines = [
        "| path | mode | conc | requests | failed | req/s | p50 ms | p99 ms "
        "| TTFT p50 ms | TTFT p99 ms |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.path} | {r.mode} | {r.concurrency} | {r.requests} | {r.failures} | "
            f"{r.rps:.0f} | {fmt(r.p50_ms)} | {fmt(r.p99_ms)} | {fmt(r.ttft_p50_ms)} | "
            f"{fmt(r.ttft_p99_ms)} |"
        )
    lines += ["", "Added by Volt (Volt path minus engine):", "",
              "| path | mode | conc | p50 ms | p99 ms | TTFT p50 ms | TTFT p99 ms |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for d in deltas:
        lines.append(
            f"| {d['path']} | {d['mode']} | {d['concurrency']} | {d['added_p50_ms']:.2f} | "
            f"{d['added_p99_ms']:.2f} | {fmt(d.get('added_ttft_p50_ms'))} | "
            f"{fmt(d.get('added_ttft_p99_ms'))} |"
        )
    lines += ["", "Targets:", ""]
    for path, checks in targets.items():
        for name, t in checks.items():
            verdict = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
            value = "-" if t["measured"] is None else f"{t['measured']:.2f}"
            lines.append(f"- {path} {name}: goal {t['goal']:g}, measured {value} ({verdict})")
    return "\n".join(lines)


def run_overhead(*, tokens: int, concurrencies: list[int], sequential_requests: int,
                 duration_s: float, json_path: Path | None,
                 api_servers: tuple[str, ...] = ("hypercorn", "uvicorn")) -> dict[str, Any]:
    from volt.testing import Cluster

    with tempfile.TemporaryDirectory(prefix="volt-bench-") as tmp, \
            Cluster(Path(tmp), heartbeat_interval_s=1.0, engine_mode="instant") as cluster:
        print("starting a Volt stack with the instant engine…", file=sys.stderr, flush=True)
        cluster.add_agent("bench-1", metro="bench")
        targets = [
            Target("engine", "http://engine/v1", unix_socket=cluster.engine_socket("bench-1"))
        ]
        for server in api_servers:
            name = f"api-{server}"
            cluster.start_api(name, server=server)
            port = cluster.api_port_of(name)
            cluster.wait_routable(port=port)
            targets.append(Target(f"volt/{server}", f"http://127.0.0.1:{port}/v1",
                                  api_key=cluster.api_key))
        rows = uvloop.run(measure(targets, tokens=tokens, concurrencies=concurrencies,
                                  sequential_requests=sequential_requests,
                                  duration_s=duration_s))
    deltas = added(rows)
    targets_met = check_targets(rows, deltas)
    report = {
        "bench": "overhead",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": {"tokens": tokens, "concurrencies": concurrencies,
                     "sequential_requests": sequential_requests, "duration_s": duration_s,
                     "engine": "instant", "api_servers": list(api_servers)},
        "results": [asdict(r) for r in rows],
        "added": deltas,
        "targets": targets_met,
    }
    print(render(rows, deltas, targets_met))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(report, indent=2) + "\n")
    return report
