"""``volt bench relay``: what Volt spends relaying each token, at a GPU's cadence.

The engine is Volt's CPU engine in ``paced`` mode: no model, the first token
after ``ttft_ms`` and then one every ``itl_ms`` per stream, so a small machine
can stand in for a GPU's token rate at hundreds of concurrent streams. The
same streams run straight against the engine's socket and through the whole
Volt path (HTTP → API → NATS → agent → engine and back); the report gives
TTFT and ITL as the client sees them, Volt's additions to both, and the CPU
Volt's own processes (API, agent, nats-server) spent per relayed token, read
from the kernel's accounting of those processes (the engine, which stands in
for the GPU, and the scheduler, which no token passes through, are left out).
Beside it, the floor at each concurrency: what one token-sized socket write
costs the kernel alone (``write_floor``), which the API pays once per token
per client whatever else it does.
"""

from __future__ import annotations

import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import uvloop

from volt.agent.engine.tiny_model import MODEL_ID
from volt.bench.loadgen import Run, Target, chat_body, closed_loop, percentile
from volt.bench.report import header, write
from volt.bench.write_floor import floor_us_per_token

GOALS = {"cpu_us_per_token": 25.0, "added_itl_p99_ms": 5.0, "added_ttft_p50_ms": 2.0}


@dataclass
class Row:
    path: str
    concurrency: int
    streams: int
    failures: int
    tokens: int
    ttft_p50_ms: float
    ttft_p99_ms: float
    itl_p50_ms: float
    itl_p99_ms: float
    cpu_us_per_token: float | None
    """Volt's processes only (None for the engine alone)."""


def _cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        times = psutil.Process(pid).cpu_times()
        total += times.user + times.system
    return total


def _row(path: str, concurrency: int, run: Run, tokens: int,
         cpu_s: float | None) -> Row:
    ttfts = [s.ttft_s * 1000 for s in run.ok if s.ttft_s is not None]
    gaps = [g * 1000 for s in run.ok for g in s.gaps_s]
    relayed = len(run.ok) * tokens
    return Row(
        path=path, concurrency=concurrency, streams=len(run.samples), failures=run.failures,
        tokens=relayed, ttft_p50_ms=round(percentile(ttfts, 50), 2),
        ttft_p99_ms=round(percentile(ttfts, 99), 2), itl_p50_ms=round(percentile(gaps, 50), 2),
        itl_p99_ms=round(percentile(gaps, 99), 2),
        cpu_us_per_token=round(cpu_s / relayed * 1e6, 1) if cpu_s is not None and relayed
        else None,
    )


async def measure(engine: Target, volt: Target, volt_pids: list[int], *, tokens: int,
                  concurrencies: list[int], duration_s: float) -> list[Row]:
    body = chat_body(MODEL_ID, tokens, stream=True)
    rows = []
    for concurrency in concurrencies:
        run = await closed_loop(engine, body, stream=True, concurrency=concurrency,
                                duration_s=duration_s)
        rows.append(_row("engine", concurrency, run, tokens, None))
        before = _cpu_seconds(volt_pids)
        run = await closed_loop(volt, body, stream=True, concurrency=concurrency,
                                duration_s=duration_s, warmup_s=0.0)
        rows.append(_row("volt", concurrency, run, tokens, _cpu_seconds(volt_pids) - before))
        print(f"  c={concurrency:<5} engine ITL p99 {rows[-2].itl_p99_ms:7.2f} ms   "
              f"volt ITL p99 {rows[-1].itl_p99_ms:7.2f} ms   "
              f"{rows[-1].cpu_us_per_token} µs CPU/token", file=sys.stderr, flush=True)
    return rows


def added(rows: list[Row], floors: dict[int, float]) -> list[dict[str, Any]]:
    by = {(r.path, r.concurrency): r for r in rows}
    out = []
    for concurrency in sorted({r.concurrency for r in rows}):
        engine, volt = by[("engine", concurrency)], by[("volt", concurrency)]
        out.append({
            "concurrency": concurrency,
            "added_ttft_p50_ms": round(volt.ttft_p50_ms - engine.ttft_p50_ms, 2),
            "added_ttft_p99_ms": round(volt.ttft_p99_ms - engine.ttft_p99_ms, 2),
            "added_itl_p50_ms": round(volt.itl_p50_ms - engine.itl_p50_ms, 2),
            "added_itl_p99_ms": round(volt.itl_p99_ms - engine.itl_p99_ms, 2),
            "cpu_us_per_token": volt.cpu_us_per_token,
            "floor_us_per_token": floors.get(concurrency),
            "failures": volt.failures,
        })
    return out


def render(rows: list[Row], deltas: list[dict[str, Any]]) -> str:
    lines = ["| path | conc | streams | failed | tokens | TTFT p50 | TTFT p99 | ITL p50 | "
             "ITL p99 | CPU µs/token |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cpu = "-" if r.cpu_us_per_token is None else f"{r.cpu_us_per_token:.1f}"
        lines.append(f"| {r.path} | {r.concurrency} | {r.streams} | {r.failures} | {r.tokens} | "
                     f"{r.ttft_p50_ms:.1f} | {r.ttft_p99_ms:.1f} | {r.itl_p50_ms:.1f} | "
                     f"{r.itl_p99_ms:.1f} | {cpu} |")
    lines += ["", "Added by Volt (ms; goals: CPU ≤ 25 µs/token, ITL p99 +≤ 5, TTFT p50 +≤ 2):",
              "", "| conc | TTFT p50 | TTFT p99 | ITL p50 | ITL p99 | CPU µs/token | "
              "floor: one write µs |", "|---:|---:|---:|---:|---:|---:|---:|"]
    for d in deltas:
        lines.append(f"| {d['concurrency']} | {d['added_ttft_p50_ms']:+.1f} | "
                     f"{d['added_ttft_p99_ms']:+.1f} | {d['added_itl_p50_ms']:+.1f} | "
                     f"{d['added_itl_p99_ms']:+.1f} | {d['cpu_us_per_token']} | "
                     f"{d['floor_us_per_token']} |")
    return "\n".join(lines)


def run_relay(*, tokens: int, concurrencies: list[int], duration_s: float, ttft_ms: float,
              itl_ms: float, json_path: Path | None, stream_interval_ms: float = 3.0,
              schedule: str = "batch") -> dict[str, Any]:
    from volt.testing import Cluster

    print("measuring the floor (one token-sized socket write)…", file=sys.stderr, flush=True)
    floors = {c: floor_us_per_token(c, itl_ms / 1000) for c in concurrencies}
    pacing = {"VOLT_AGENT_PACED_TTFT_MS": str(ttft_ms), "VOLT_AGENT_PACED_ITL_MS": str(itl_ms),
              "VOLT_AGENT_PACED_SCHEDULE": schedule,
              "VOLT_AGENT_STREAM_INTERVAL_MS": str(stream_interval_ms),
              "VOLT_AGENT_MAX_INFLIGHT": "100000", "VOLT_API_MAX_INFLIGHT_PER_POD": "100000"}
    with tempfile.TemporaryDirectory(prefix="volt-bench-") as tmp, \
            Cluster(Path(tmp), heartbeat_interval_s=1.0, engine_mode="paced",
                    extra_env=pacing) as cluster:
        print(f"starting a Volt stack with the paced engine ({ttft_ms:g} ms to the first "
              f"token, then one every {itl_ms:g} ms)…", file=sys.stderr, flush=True)
        agent = cluster.add_agent("bench-1", metro="bench")
        api = cluster.start_api()
        cluster.wait_routable()
        assert cluster.nats.pid is not None
        volt_pids = [api.pid, agent.pid, cluster.nats.pid]
        engine = Target("engine", "http://engine/v1",
                        unix_socket=cluster.engine_socket("bench-1"))
        volt = Target("volt", cluster.base_url, api_key=cluster.api_key)
        rows = uvloop.run(measure(engine, volt, volt_pids, tokens=tokens,
                                  concurrencies=concurrencies, duration_s=duration_s))
    deltas = added(rows, floors)
    report = header("relay", {"tokens": tokens, "concurrencies": concurrencies,
                              "duration_s": duration_s, "ttft_ms": ttft_ms, "itl_ms": itl_ms,
                              "engine": "paced", "schedule": schedule,
                              "stream_interval_ms": stream_interval_ms})
    report.update({"goals": GOALS, "results": [asdict(r) for r in rows], "added": deltas})
    print(render(rows, deltas))
    write(report, json_path)
    return report
