"""``volt bench serve``: an OpenAI-compatible serving benchmark for any base URL.

Point it at Volt, at a bare engine (vLLM, Volt's CPU engine) or at another
gateway. Arrivals are Poisson at a request rate, or a fixed number of
clients back to back; a sweep runs one point per rate or concurrency. Prompt
and output lengths come from distributions (``64``, ``uniform:32:256``,
``normal:128:32``). Every request streams with usage on its last chunk, so
each point reports, as vLLM's ``benchmark_serving`` does:

* TTFT (time to the first token), TPOT (time per output token after the
  first, per request), ITL (gaps between token events), end-to-end latency:
  p50/p90/p99;
* request and token throughput, failures;
* goodput: requests per second that met every SLO given.

Results print as a table, and go to JSON (``--json``) and a PNG (``--plot``).
The load generator uses ``volt.http1`` and parses only the usage event, so
it costs little CPU beside what it measures (they share this machine).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from volt.bench.loadgen import Target, percentile
from volt.http1 import Http1Client, HttpError

WORDS = (
    "metro tier pod cloud rack lease token stream model engine queue region zone node "
    "power cool fiber vault spark forge latency river mountain garden window summer music"
).split()


class LengthError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Lengths:
    """A distribution of token counts: ``N``, ``uniform:LO:HI`` or ``normal:MEAN:SD``."""

    kind: str
    a: float
    b: float = 0.0

    @classmethod
    def parse(cls, text: str) -> Lengths:
        parts = text.split(":")
        try:
            if len(parts) == 1:
                return cls("fixed", float(int(parts[0])))
            if parts[0] == "uniform" and len(parts) == 3:
                lo, hi = int(parts[1]), int(parts[2])
                if lo > hi:
                    raise LengthError(f"uniform:{lo}:{hi}: the low end is above the high end")
                return cls("uniform", lo, hi)
            if parts[0] == "normal" and len(parts) == 3:
                return cls("normal", float(parts[1]), float(parts[2]))
        except ValueError as exc:
            if isinstance(exc, LengthError):
                raise
            raise LengthError(f"{text!r}: numbers expected") from exc
        raise LengthError(f"{text!r}: use N, uniform:LO:HI or normal:MEAN:SD")

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            value = self.a
        elif self.kind == "uniform":
            value = rng.randint(int(self.a), int(self.b))
        else:
            value = rng.gauss(self.a, self.b)
        return max(1, round(value))

    def __str__(self) -> str:
        if self.kind == "fixed":
            return str(int(self.a))
        return f"{self.kind}:{self.a:g}:{self.b:g}"


@dataclass(frozen=True, slots=True)
class Slo:
    ttft_ms: float | None = None
    tpot_ms: float | None = None
    e2e_ms: float | None = None

    def met(self, result: Result) -> bool:
        return (
            (self.ttft_ms is None or result.ttft_s * 1000 <= self.ttft_ms)
            and (self.tpot_ms is None or result.tpot_s * 1000 <= self.tpot_ms)
            and (self.e2e_ms is None or result.e2e_s * 1000 <= self.e2e_ms)
        )


@dataclass(slots=True)
class Result:
    ok: bool
    e2e_s: float
    ttft_s: float = math.nan
    tpot_s: float = 0.0
    gaps_s: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    output_tokens: int = 0
    error: str = ""


class _Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class _UsageEvent(msgspec.Struct):
    usage: _Usage | None = None


_usage_event = msgspec.json.Decoder(_UsageEvent)


def _prompt(rng: random.Random, tokens: int) -> str:
    # About one token per common English word for BPE tokenizers; the counts
    # reported are the server's own (usage), not this estimate.
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def request_bodies(model: str, endpoint: str, count: int, prompt: Lengths, output: Lengths,
                   seed: int) -> list[bytes]:
    """``count`` streaming requests, the same for every target given the same seed."""
    rng = random.Random(seed)
    bodies = []
    for _ in range(count):
        text = _prompt(rng, prompt.sample(rng))
        body: dict[str, Any] = {
            "model": model, "max_tokens": output.sample(rng), "stream": True,
            "stream_options": {"include_usage": True},
        }
        if endpoint == "chat":
            body["messages"] = [{"role": "user", "content": text}]
        else:
            body["prompt"] = text
        bodies.append(json.dumps(body).encode())
    return bodies


def _has_token(event: bytes) -> bool:
    # A token event carries non-empty content (chat) or text (completions).
    for marker in (b'"content":"', b'"text":"'):
        at = event.find(marker)
        if at >= 0 and event[at + len(marker): at + len(marker) + 1] != b'"':
            return True
    return False


async def send_one(http: Http1Client, path: str, body: bytes) -> Result:
    started = time.perf_counter()
    try:
        async with await http.request("POST", path, body) as response:
            if response.status != 200:
                data = await response.read()
                return Result(False, time.perf_counter() - started,
                              error=f"HTTP {response.status}: {data[:200]!r}")
            arrivals: list[float] = []
            usage: _Usage | None = None
            buffer = b""
            done = False
            async for data in response.chunks():
                now = time.perf_counter()
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    if event.startswith(b"data: [DONE]"):
                        done = True
                    elif b'"error"' in event and b'"choices"' not in event:
                        return Result(False, now - started, error=event[:200].decode("replace"))
                    elif _has_token(event):
                        arrivals.append(now)
                    if b'"usage":{' in event:
                        with_usage = _usage_event.decode(event[5:].strip())
                        usage = with_usage.usage or usage
            ended = time.perf_counter()
    except (HttpError, OSError, msgspec.MsgspecError) as exc:
        return Result(False, time.perf_counter() - started, error=type(exc).__name__)
    if not done:
        return Result(False, ended - started, error="stream ended before [DONE]")
    if not arrivals:
        # A whole stream with no text: the model's first token was its end
        # token (a sampled tiny model does that now and then). A valid,
        # empty completion; its "first token" is the end.
        arrivals = [ended]
    output = usage.completion_tokens if usage is not None else len(arrivals)
    ttft = arrivals[0] - started
    tpot = (arrivals[-1] - arrivals[0]) / (output - 1) if output > 1 else 0.0
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    return Result(True, ended - started, ttft, tpot, gaps,
                  usage.prompt_tokens if usage is not None else 0, output)


@dataclass
class Point:
    target: str
    mode: str
    """``rate`` (Poisson arrivals) or ``concurrency`` (clients back to back)."""
    load: float
    requests: int
    failed: int
    duration_s: float
    request_throughput: float
    output_token_throughput: float
    total_token_throughput: float
    goodput: float | None
    ttft_ms: dict[str, float]
    tpot_ms: dict[str, float]
    itl_ms: dict[str, float]
    e2e_ms: dict[str, float]
    errors: list[str]
    cpu_ms_per_request: float | None = None
    """CPU time the target's own processes spent per completed request (when the
    benchmark knows them: ``volt bench compare``); unlike req/s, it does not
    depend on what else shares the machine."""


def _ms(value: float, digits: int = 1) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def _quantiles(values: Sequence[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values]
    return {f"p{q}": round(percentile(ms, q), 3) for q in (50, 90, 99)} | {
        "mean": round(sum(ms) / len(ms), 3) if ms else math.nan
    }


def summarize(target: str, mode: str, load: float, results: list[Result], duration_s: float,
              slo: Slo | None) -> Point:
    ok = [r for r in results if r.ok]
    output = sum(r.output_tokens for r in ok)
    prompt = sum(r.prompt_tokens for r in ok)
    errors = sorted({r.error for r in results if not r.ok})[:5]
    return Point(
        target=target, mode=mode, load=load, requests=len(results),
        failed=len(results) - len(ok), duration_s=round(duration_s, 3),
        request_throughput=round(len(ok) / duration_s, 2),
        output_token_throughput=round(output / duration_s, 1),
        total_token_throughput=round((output + prompt) / duration_s, 1),
        goodput=round(sum(1 for r in ok if slo.met(r)) / duration_s, 2) if slo else None,
        ttft_ms=_quantiles([r.ttft_s for r in ok]),
        tpot_ms=_quantiles([r.tpot_s for r in ok if r.output_tokens > 1]),
        itl_ms=_quantiles([gap for r in ok for gap in r.gaps_s]),
        e2e_ms=_quantiles([r.e2e_s for r in ok]),
        errors=errors,
    )


async def poisson(target: Target, path: str, bodies: list[bytes], rate: float,
                  seed: int) -> tuple[list[Result], float]:
    """Send ``bodies`` with exponential gaps at ``rate`` per second (an open loop:
    arrivals do not wait for answers, as real users do not)."""
    http, _ = target.client()
    rng = random.Random(seed)
    tasks = []
    started = time.perf_counter()
    try:
        next_at = started
        for body in bodies:
            delay = next_at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(send_one(http, path, body)))
            next_at += rng.expovariate(rate)
        results = list(await asyncio.gather(*tasks))
    finally:
        http.close()
    return results, time.perf_counter() - started


async def fixed_concurrency(target: Target, path: str, bodies: list[bytes],
                            concurrency: int) -> tuple[list[Result], float]:
    http, _ = target.client()
    queue = list(reversed(bodies))
    results: list[Result] = []

    async def client() -> None:
        while queue:
            results.append(await send_one(http, path, queue.pop()))

    started = time.perf_counter()
    try:
        await asyncio.gather(*(client() for _ in range(concurrency)))
    finally:
        http.close()
    return results, time.perf_counter() - started


@dataclass(frozen=True, slots=True)
class Sweep:
    model: str
    endpoint: str = "chat"
    rates: tuple[float, ...] = ()
    concurrencies: tuple[int, ...] = ()
    requests: int = 200
    prompt: Lengths = Lengths("fixed", 64)
    output: Lengths = Lengths("fixed", 64)
    slo: Slo | None = None
    seed: int = 0
    warmup: int = 8


def _path(prefix: str, endpoint: str) -> str:
    return f"{prefix}/chat/completions" if endpoint == "chat" else f"{prefix}/completions"


def _cpu_seconds(processes: list[Any]) -> float:
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except Exception:  # gone: it counted nothing more
            continue
        total += times.user + times.system
    return total


async def run_sweep(targets: list[Target], sweep: Sweep,
                    processes: dict[str, list[Any]] | None = None) -> list[Point]:
    """Every load point of the sweep, against each target in turn (same requests).
    ``processes``: target name -> its psutil processes, to count their CPU."""
    points = []
    loads: list[tuple[str, float]] = [("rate", r) for r in sweep.rates] + [
        ("concurrency", float(c)) for c in sweep.concurrencies
    ]
    for mode, load in loads:
        count = sweep.requests
        if mode == "concurrency":
            count = max(count, int(load) * 4)  # every client sends several
        bodies = request_bodies(sweep.model, sweep.endpoint, count, sweep.prompt,
                                sweep.output, sweep.seed)
        for target in targets:
            _, prefix = target.client()
            path = _path(prefix, sweep.endpoint)
            warm = bodies[: sweep.warmup]
            await fixed_concurrency(target, path, warm, min(len(warm), 8) or 1)
            mine = (processes or {}).get(target.name, [])
            cpu_before = _cpu_seconds(mine)
            if mode == "rate":
                results, elapsed = await poisson(target, path, bodies, load, sweep.seed)
            else:
                results, elapsed = await fixed_concurrency(target, path, bodies, int(load))
            point = summarize(target.name, mode, load, results, elapsed, sweep.slo)
            if mine and (done := point.requests - point.failed):
                point.cpu_ms_per_request = round(
                    (_cpu_seconds(mine) - cpu_before) * 1000 / done, 3)
            points.append(point)
            failed = f", failed {point.failed} ({point.errors[0]})" if point.failed else ""
            print(f"  {target.name:10} {mode} {load:g}: {point.request_throughput:8.1f} req/s, "
                  f"TTFT p50 {_ms(point.ttft_ms['p50'])} ms{failed}",
                  file=sys.stderr, flush=True)
    return points


def render(points: list[Point]) -> str:
    lines = [
        "| target | load | req/s | out tok/s | failed | TTFT p50/p99 ms | TPOT p50/p99 ms "
        "| ITL p50/p99 ms | E2E p50/p90/p99 ms | goodput req/s | CPU ms/req |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        load = f"rate {p.load:g}/s" if p.mode == "rate" else f"c={int(p.load)}"
        goodput = "-" if p.goodput is None else f"{p.goodput:.1f}"
        lines.append(
            f"| {p.target} | {load} | {p.request_throughput:.1f} | "
            f"{p.output_token_throughput:.0f} | {p.failed} | "
            f"{_ms(p.ttft_ms['p50'])} / {_ms(p.ttft_ms['p99'])} | "
            f"{_ms(p.tpot_ms['p50'], 2)} / {_ms(p.tpot_ms['p99'], 2)} | "
            f"{_ms(p.itl_ms['p50'], 2)} / {_ms(p.itl_ms['p99'], 2)} | "
            f"{_ms(p.e2e_ms['p50'])} / {_ms(p.e2e_ms['p90'])} / {_ms(p.e2e_ms['p99'])} | "
            f"{goodput} | "
            f"{'-' if p.cpu_ms_per_request is None else f'{p.cpu_ms_per_request:.2f}'} |"
        )
    return "\n".join(lines)


def plot(points: list[Point], path: Path, title: str) -> None:
    """Throughput and latency against load, one line per target; one row of
    panels per kind of load (request rate, concurrency)."""
    import matplotlib

    matplotlib.use("Agg")  # no screen here
    import matplotlib.pyplot as plt

    modes = list(dict.fromkeys(p.mode for p in points))
    fig, grid = plt.subplots(len(modes), 3, figsize=(15, 4.5 * len(modes)), squeeze=False)
    panels: list[tuple[str, Callable[[Point], float]]] = [
        ("requests/s (log)", lambda p: p.request_throughput),
        ("TTFT p50 ms (log)", lambda p: p.ttft_ms["p50"]),
        ("end-to-end p99 ms (log)", lambda p: p.e2e_ms["p99"]),
    ]
    for axes, mode in zip(grid, modes, strict=True):
        for axis, (label, value) in zip(axes, panels, strict=True):
            for target in dict.fromkeys(p.target for p in points):
                mine = [p for p in points if p.target == target and p.mode == mode]
                axis.plot([p.load for p in mine], [value(p) for p in mine], marker="o",
                          label=target)
            axis.set_xlabel("request rate /s (Poisson)" if mode == "rate" else "concurrency")
            axis.set_ylabel(label)
            axis.set_yscale("log")
            axis.grid(True, alpha=0.3)
        axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(points: list[Point], sweep: Sweep, extra: dict[str, Any] | None = None
           ) -> dict[str, Any]:
    settings = asdict(sweep)
    settings["prompt"], settings["output"] = str(sweep.prompt), str(sweep.output)
    return {
        "bench": "serve",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "platform": platform.platform()},
        "settings": settings,
        **(extra or {}),
        "points": [asdict(p) for p in points],
    }


def write_outputs(points: list[Point], data: dict[str, Any], json_path: Path | None,
                  plot_path: Path | None, title: str) -> None:
    print(render(points))
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(data, indent=2) + "\n")
        print(f"\nJSON: {json_path}", file=sys.stderr)
    if plot_path is not None:
        plot(points, plot_path, title)
        print(f"plot: {plot_path}", file=sys.stderr)


def run_serve(targets: list[Target], sweep: Sweep, *, json_path: Path | None,
              plot_path: Path | None) -> list[Point]:
    import uvloop

    points = uvloop.run(run_sweep(targets, sweep))
    write_outputs(points, report(points, sweep), json_path, plot_path,
                  f"{sweep.model} ({sweep.endpoint}), prompt {sweep.prompt}, "
                  f"output {sweep.output}")
    return points
