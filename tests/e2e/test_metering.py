"""Metering end to end: every request counted once, to the token, through restarts.

Ground truth is the engine's own counters (vllm:prompt_tokens_total,
vllm:generation_tokens_total) and the usage the responses carried.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from volt.agent.engine.client import EngineClient
from volt.http1 import Http1Client
from volt.testing import Cluster

pytestmark = pytest.mark.slow
MESSAGES: list[Any] = [{"role": "user", "content": "count my tokens"}]


@pytest.fixture
def cluster(tmp_path: Path, tiny_model: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, heartbeat_interval_s=0.3, model_cache=tiny_model) as c:
        c.add_agent("fra-1", metro="fra")
        c.start_api()
        c.wait_routable()  # one real request: it is metered too
        wait_for_requests(c, 1)
        yield c


def engine_counters(cluster: Cluster) -> tuple[int, int]:
    async def read() -> str:
        engine = EngineClient(cluster.engine_socket("fra-1"))
        try:
            return await engine.metrics()
        finally:
            await engine.close()

    values = {}
    for line in asyncio.run(read()).splitlines():
        for name in ("vllm:prompt_tokens_total", "vllm:generation_tokens_total"):
            if line.startswith(name):
                values[name] = int(float(line.rsplit(" ", 1)[1]))
    return values["vllm:prompt_tokens_total"], values["vllm:generation_tokens_total"]


def usage(cluster: Cluster, query: str = "") -> dict[str, Any]:
    status, _, body = cluster.request(f"/v1/usage{query}")
    assert status == 200, body
    report: dict[str, Any] = json.loads(body)
    return report


def totals(cluster: Cluster) -> dict[str, int]:
    data = usage(cluster)["data"]
    if not data:
        return {"requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}
    return {k: int(v) for k, v in data[0].items() if isinstance(v, int)}


def wait_for_requests(cluster: Cluster, count: int, timeout_s: float = 30) -> dict[str, int]:
    """The tenant's totals once exactly ``count`` requests are metered in all."""
    deadline = time.monotonic() + timeout_s
    while True:
        now = totals(cluster)
        if now["requests"] >= count:
            assert now["requests"] == count, f"{now['requests']} requests metered, {count} sent"
            return now
        assert time.monotonic() < deadline, f"only {now['requests']} of {count} metered"
        time.sleep(0.2)


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


def cancelled_stream(cluster: Cluster, tokens_before_cancel: int) -> int:
    """A stream the client abandons after some content; returns the chunks it saw."""

    async def run() -> int:
        http = Http1Client(port=cluster.api_port,
                           headers={"Authorization": f"Bearer {cluster.api_key}"})
        body = json.dumps({"model": "volt-tiny", "messages": MESSAGES, "max_tokens": 2000,
                           "stream": True}).encode()
        seen = 0
        try:
            response = await http.request("POST", "/v1/chat/completions", body)
            async for data in response.chunks():
                seen += data.count(b'"content"')
                if seen >= tokens_before_cancel:
                    break
            response.close()
        finally:
            http.close()
        return seen

    return asyncio.run(run())


def test_completed_requests_are_metered_to_the_token(cluster: Cluster) -> None:
    before = totals(cluster)
    prompt_before, generated_before = engine_counters(cluster)
    expected_prompt = expected_completion = 0
    with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key) as sdk:
        for max_tokens in (3, 9, 17):
            reply = sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES,
                                                max_tokens=max_tokens)
            assert reply.usage is not None
            expected_prompt += reply.usage.prompt_tokens
            expected_completion += reply.usage.completion_tokens
            chunks = list(sdk.chat.completions.create(
                model="volt-tiny", messages=MESSAGES, max_tokens=max_tokens, stream=True,
                stream_options={"include_usage": True},
            ))
            assert chunks[-1].usage is not None
            expected_prompt += chunks[-1].usage.prompt_tokens
            expected_completion += chunks[-1].usage.completion_tokens
    metered = delta(wait_for_requests(cluster, before["requests"] + 6), before)
    prompt_after, generated_after = engine_counters(cluster)
    # What the responses said, what the engine did and what is billed all agree.
    assert metered["prompt_tokens"] == expected_prompt == prompt_after - prompt_before
    assert metered["completion_tokens"] == expected_completion
    assert expected_completion == generated_after - generated_before
    assert metered["total_tokens"] == expected_prompt + expected_completion


def test_cancelled_streams_are_billed_for_what_the_pod_delivered(cluster: Cluster) -> None:
    before = totals(cluster)
    prompt_before, generated_before = engine_counters(cluster)
    with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key) as sdk:
        done = sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES, max_tokens=5)
    assert done.usage is not None
    seen = [cancelled_stream(cluster, n) for n in (3, 10, 25)]
    metered = delta(wait_for_requests(cluster, before["requests"] + 4), before)
    prompt_after, generated_after = engine_counters(cluster)
    # Prompts: exact. Completions: at least what the clients saw, at most what
    # the engine generated (a step or two can run after the client left).
    assert metered["prompt_tokens"] == prompt_after - prompt_before
    billed_for_cancelled = metered["completion_tokens"] - done.usage.completion_tokens
    assert sum(seen) <= billed_for_cancelled <= generated_after - generated_before
    assert billed_for_cancelled > 0


def test_metering_survives_api_and_scheduler_restarts(cluster: Cluster) -> None:
    def send(count: int) -> int:
        total = 0
        with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                           max_retries=5) as sdk:
            for _ in range(count):
                reply = sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES,
                                                    max_tokens=4)
                assert reply.usage is not None
                total += reply.usage.completion_tokens
        return total

    before = totals(cluster)
    _, generated_before = engine_counters(cluster)
    completion = send(5)
    cluster.restart("api", kill=True)
    cluster.wait_routable()  # one more (metered) request
    completion += send(5)
    cluster.restart("scheduler", kill=True)  # records wait in JetStream meanwhile
    completion += send(5)
    metered = delta(wait_for_requests(cluster, before["requests"] + 16), before)
    _, generated_after = engine_counters(cluster)
    # Nothing lost, nothing counted twice: the engine's own count, to the token.
    assert metered["completion_tokens"] == generated_after - generated_before
    assert metered["completion_tokens"] >= completion


def test_usage_grouping_and_bad_queries(cluster: Cluster) -> None:
    with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key) as sdk:
        sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES, max_tokens=2)
    wait_for_requests(cluster, 2)  # this one and the readiness probe
    today = time.strftime("%Y-%m-%d", time.gmtime())
    report = usage(cluster, "?group_by=model,day,metro")
    assert report["object"] == "usage"
    assert [(e["model"], e["day"], e["metro"], e["requests"]) for e in report["data"]] == [
        ("volt-tiny", today, "fra", 2)
    ]
    assert usage(cluster, f"?end={today}")["data"] == []  # the window ends before today
    for query, param in (("?group_by=colour", "group_by"), ("?start=yesterday", "start"),
                         ("?start=200&end=100", "start")):
        status, _, body = cluster.request(f"/v1/usage{query}")
        assert status == 400, query
        assert json.loads(body)["error"]["param"] == param
    status, _, _ = cluster.request("/v1/usage", key="volt_sk_live_" + "x" * 43)
    assert status == 401
