"""Admission end to end: a pod limited to 2 requests, two tenants, one flooding."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from volt.http1 import Http1Client
from volt.testing import Cluster

pytestmark = pytest.mark.slow


@pytest.fixture
def cluster(tmp_path: Path, tiny_model: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path, heartbeat_interval_s=0.3, model_cache=tiny_model) as c:
        c.add_agent("fra-1", metro="fra")
        c.start_api(max_inflight_per_pod="2", queue_limit="8", tenant_queue_limit="4")
        c.wait_routable()
        yield c


def waiting(cluster: Cluster) -> int:
    status, _, text = cluster.request("/metrics")
    assert status == 200
    for line in text.decode().splitlines():
        if line.startswith('volt_api_waiting_requests{model="volt-tiny"}'):
            return int(float(line.rsplit(" ", 1)[1]))
    return 0


async def until_waiting(cluster: Cluster, count: int) -> None:
    deadline = time.monotonic() + 20
    while await asyncio.to_thread(waiting, cluster) != count:
        assert time.monotonic() < deadline, f"never {count} waiting"
        await asyncio.sleep(0.05)


def body(max_tokens: int) -> bytes:
    # Greedy, so a request's length is the same every run: sampled, the tiny
    # model sometimes picks its end token early, and a request meant to hold
    # a slot for seconds would leave it at once.
    return json.dumps({"model": "volt-tiny", "max_tokens": max_tokens, "temperature": 0,
                       "messages": [{"role": "user", "content": "take your time"}]}).encode()


async def call(cluster: Cluster, key: str, max_tokens: int) -> tuple[int, dict[str, str], float]:
    """(status, headers of a refusal, when it finished)."""
    http = Http1Client(port=cluster.api_port, headers={"Authorization": f"Bearer {key}"})
    try:
        async with await http.request("POST", "/v1/chat/completions", body(max_tokens)) as resp:
            data = await resp.read()
            headers = {}
            if resp.status == 429:
                error = json.loads(data)["error"]
                headers = {"code": error["code"], "type": error["type"]}
            return resp.status, headers, time.monotonic()
    finally:
        http.close()


def test_a_flooding_tenant_gets_429s_and_cannot_starve_another(cluster: Cluster) -> None:
    flooder, patient = cluster.api_key, cluster.add_key("patient-corp")

    async def scenario() -> None:
        # The flooder fills both slots, then its 4 queue places...
        running = [asyncio.create_task(call(cluster, flooder, 1000)) for _ in range(2)]
        await asyncio.sleep(0.3)
        queued = [asyncio.create_task(call(cluster, flooder, 400)) for _ in range(4)]
        await until_waiting(cluster, 4)
        # ...so its next request is refused at once, with a 429...
        status, error, _ = await asyncio.wait_for(call(cluster, flooder, 5), 5)
        assert status == 429
        assert error == {"code": "rate_limit_exceeded", "type": "requests"}
        # ...while another tenant still gets in line, and is served in turn,
        # before most of the flooder's earlier-queued requests.
        status, _, patient_done = await asyncio.wait_for(call(cluster, patient, 5), 60)
        assert status == 200
        results = await asyncio.gather(*running, *queued)
        assert all(result[0] == 200 for result in results)
        flooder_queued_done = [done for _, _, done in results[2:]]
        assert sum(done > patient_done for done in flooder_queued_done) >= 3

    asyncio.run(scenario())


def test_a_429_carries_retry_after_and_rate_limit_headers(cluster: Cluster) -> None:
    async def scenario() -> dict[str, str]:
        hold = [asyncio.create_task(call(cluster, cluster.api_key, 1000)) for _ in range(6)]
        await until_waiting(cluster, 4)
        refused = await asyncio.to_thread(cluster.request, "/v1/chat/completions",
                                          json.loads(body(5)))
        await asyncio.gather(*hold)
        status, headers, _ = refused
        assert status == 429
        return {k.lower(): v for k, v in headers.items()}

    headers = asyncio.run(scenario())
    assert int(headers["retry-after"]) >= 1
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert headers["x-ratelimit-limit-requests"] == "4"
    assert "x-ratelimit-reset-requests" in headers
