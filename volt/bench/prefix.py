"""``volt bench prefix``: what prefix-aware routing buys, against the alternatives.

One Volt with several pods (the CPU engine and its prefix cache) and one API
replica per routing policy (``api.routing``), all on the same pods. Each
scenario runs once per policy, in one process and one run, so the figures
compare:

- ``shared_prefixes``: many users in multi-turn chats, each under one of many
  long system prompts (assistant products: a shared instruction block, then a
  conversation that grows turn by turn). Together the prompts need about
  twice what one pod's prefix cache holds, and less than all pods hold: the
  pod holding a chat's earlier turns, or its system prompt, skips their
  prefill, and a router that spreads each prompt over every pod makes every
  pod's cache churn.
- ``hot_prefix``: everyone under one system prompt, single turns, more users
  at once. Every pod soon holds the prefix; sending everything to the pod
  that held it first only makes a queue. Here the load scorer must win.

Every run has its own random tag at the head of its system prompts, so no
run finds another's prefixes in the engines' caches. Reported per run: the
share of prompt tokens the engines found cached (``cached_tokens``), TTFT
p50/p90, output tokens/s, and how the requests spread over the pods.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import uvloop

from volt.agent.engine.tiny_model import MODEL_ID
from volt.bench.loadgen import Target, percentile
from volt.bench.report import header, progress, write
from volt.http1 import HttpError

POLICIES = ("prefix_aware", "least_load", "round_robin", "prefix_only")
WORDS = ("metro tier pod cache token prefix route engine node fleet lease rack tenant "
         "quota region latency batch stream answer question policy").split()


@dataclass(frozen=True)
class Scenario:
    name: str
    system_prompts: int
    users: int
    turns: int
    concurrency: int
    system_chars: int = 2000
    """About 1,500 tokens of the tiny model's tokenizer."""
    max_tokens: int = 16


SCENARIOS = (
    # The CPU engine's cache: 64 blocks of 256 tokens (16k tokens) per pod;
    # 24 prompts of ~1,500 tokens need ~36k.
    Scenario("shared_prefixes", system_prompts=24, users=72, turns=3, concurrency=8),
    Scenario("hot_prefix", system_prompts=1, users=64, turns=1, concurrency=16),
)


@dataclass
class Turn:
    ok: bool
    ttft_s: float = 0.0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    pod: str = ""
    text: str = ""


@dataclass
class Row:
    scenario: str
    policy: str
    requests: int
    failures: int
    cache_hit_rate: float
    """Cached prompt tokens / prompt tokens, as the engines reported them."""
    ttft_p50_ms: float
    ttft_p90_ms: float
    output_tokens_per_s: float
    busiest_pod_share: float
    """The share of the requests the busiest pod served (1/pods is even)."""


def _text(rng: random.Random, chars: int) -> str:
    words: list[str] = []
    while sum(len(w) + 1 for w in words) < chars:
        words.append(rng.choice(WORDS))
    return " ".join(words)


async def _turn(target: Target, body: dict[str, Any]) -> Turn:
    http, prefix = target.client()
    started = time.perf_counter()
    turn = Turn(ok=False)
    text: list[str] = []
    try:
        async with await http.request("POST", f"{prefix}/chat/completions",
                                      json.dumps(body).encode()) as response:
            if response.status != 200:
                await response.read()
                return turn
            buffer = b""
            async for data in response.chunks():
                buffer += data
                *events, buffer = buffer.split(b"\n\n")
                for event in events:
                    payload = event.removeprefix(b"data: ").strip()
                    if payload == b"[DONE]":
                        turn.ok = True
                        continue
                    chunk = json.loads(payload)
                    for choice in chunk.get("choices") or ():
                        if (content := choice["delta"].get("content")):
                            if not text:
                                turn.ttft_s = time.perf_counter() - started
                            text.append(content)
                    if usage := chunk.get("usage"):
                        turn.prompt_tokens = usage["prompt_tokens"]
                        turn.completion_tokens = usage["completion_tokens"]
                        details = usage.get("prompt_tokens_details") or {}
                        turn.cached_tokens = details.get("cached_tokens") or 0
                    if volt := chunk.get("volt"):
                        turn.pod = volt["pod"]
    except (HttpError, OSError, ValueError):
        turn.ok = False
    finally:
        http.close()
    turn.text = "".join(text)
    return turn


async def run_scenario(target: Target, scenario: Scenario) -> tuple[list[Turn], float]:
    """Every user's chat, ``scenario.concurrency`` users at a time; the turns
    and the seconds the whole took."""
    tag = secrets.token_hex(8)  # this run's own prefixes: no other run cached them
    rng = random.Random(tag)
    systems = [f"[{tag}-{i}] " + _text(rng, scenario.system_chars)
               for i in range(scenario.system_prompts)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for user in range(scenario.users):
        queue.put_nowait(user)
    turns: list[Turn] = []

    async def worker() -> None:
        while not queue.empty():
            user = queue.get_nowait()
            messages: list[dict[str, str]] = [
                {"role": "system", "content": systems[user % len(systems)]}]
            for number in range(scenario.turns):
                messages.append({"role": "user", "content":
                                 f"user {user} turn {number}: " + _text(rng, 160)})
                turn = await _turn(target, {
                    "model": MODEL_ID, "messages": messages, "stream": True,
                    "stream_options": {"include_usage": True}, "temperature": 0,
                    "max_tokens": scenario.max_tokens, "user": f"{tag}-user-{user}"})
                turns.append(turn)
                if not turn.ok:
                    break
                messages.append({"role": "assistant", "content": turn.text})

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(scenario.concurrency)))
    return turns, time.perf_counter() - started


def _row(scenario: Scenario, policy: str, turns: list[Turn], elapsed_s: float) -> Row:
    ok = [t for t in turns if t.ok]
    prompt = sum(t.prompt_tokens for t in ok)
    pods = Counter(t.pod for t in ok)
    return Row(
        scenario=scenario.name, policy=policy, requests=len(turns),
        failures=len(turns) - len(ok),
        cache_hit_rate=round(sum(t.cached_tokens for t in ok) / prompt, 3) if prompt else 0.0,
        ttft_p50_ms=round(percentile([t.ttft_s * 1000 for t in ok], 50), 1),
        ttft_p90_ms=round(percentile([t.ttft_s * 1000 for t in ok], 90), 1),
        output_tokens_per_s=round(sum(t.completion_tokens for t in ok) / elapsed_s, 1),
        busiest_pod_share=round(max(pods.values()) / len(ok), 2) if ok else 0.0,
    )


async def measure(targets: dict[str, Target], scenarios: tuple[Scenario, ...]) -> list[Row]:
    rows = []
    for scenario in scenarios:
        for policy, target in targets.items():
            turns, elapsed = await run_scenario(target, scenario)
            rows.append(_row(scenario, policy, turns, elapsed))
            r = rows[-1]
            progress(f"  {scenario.name:<16} {policy:<13} hit {r.cache_hit_rate:5.1%}  "
                     f"TTFT p50 {r.ttft_p50_ms:6.1f} ms  p90 {r.ttft_p90_ms:6.1f} ms  "
                     f"{r.output_tokens_per_s:6.1f} tok/s  busiest pod "
                     f"{r.busiest_pod_share:.0%}  failed {r.failures}")
    return rows


def render(rows: list[Row]) -> str:
    lines = ["| scenario | routing | requests | failed | cache hit | TTFT p50 ms | "
             "TTFT p90 ms | output tok/s | busiest pod |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.scenario} | {r.policy} | {r.requests} | {r.failures} | "
                     f"{r.cache_hit_rate:.1%} | {r.ttft_p50_ms:.1f} | {r.ttft_p90_ms:.1f} | "
                     f"{r.output_tokens_per_s:.1f} | {r.busiest_pod_share:.0%} |")
    return "\n".join(lines)


def run_prefix(*, pods: int, policies: tuple[str, ...], json_path: Path | None,
               scenarios: tuple[Scenario, ...] = SCENARIOS) -> dict[str, Any]:
    from volt.testing import Cluster

    # Every pod takes every request it is sent: the policies, not a cap, decide.
    settings = {"VOLT_API_MAX_INFLIGHT_PER_POD": "100000", "VOLT_AGENT_MAX_INFLIGHT": "100000"}
    with tempfile.TemporaryDirectory(prefix="volt-bench-") as tmp, \
            Cluster(Path(tmp), heartbeat_interval_s=0.5, extra_env=settings) as cluster:
        progress(f"starting Volt with {pods} pods of the CPU engine and one API per routing "
                 f"policy ({', '.join(policies)})…")
        for number in range(pods):
            cluster.add_agent(f"pod-{number}", metro="bench")
        targets = {}
        for policy in policies:
            name = f"api-{policy.replace('_', '-')}"
            cluster.start_api(name, routing=policy)
            port = cluster.api_port_of(name)
            targets[policy] = Target(policy, f"http://127.0.0.1:{port}/v1",
                                     api_key=cluster.api_key)
        for policy in policies:
            cluster.wait_routable(port=cluster.api_port_of(f"api-{policy.replace('_', '-')}"))
        cluster.wait_placeable([f"pod-{number}" for number in range(pods)])
        rows = uvloop.run(measure(targets, scenarios))
    report = header("prefix", {"pods": pods, "policies": list(policies),
                               "scenarios": [asdict(s) for s in scenarios],
                               "engine": "cpu (tiny model, prefix cache)"})
    report["results"] = [asdict(r) for r in rows]
    print(render(rows))
    write(report, json_path)
    return report
