"""Failure modes end to end: killed agents, a restarted NATS, vanished clients."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import nats
import openai
import psutil
import pytest

from volt.agent.engine.client import EngineClient
from volt.http1 import Http1Client
from volt.testing import Cluster
from volt.wire import SCHEDULER, PlacementView, subjects

HEARTBEAT_S = 0.3

pytestmark = pytest.mark.slow
BODY = {"model": "volt-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def served_by(cluster: Cluster, **extra: object) -> str:
    status, _, body = cluster.request("/v1/chat/completions", {**BODY, **extra})
    assert status == 200, body
    pod: str = json.loads(body)["volt"]["pod"]
    return pod


async def watch_until_not_ready(cluster: Cluster, node_id: str, timeout_s: float) -> float:
    """Seconds until the scheduler's published view no longer offers ``node_id``."""
    nc = await cluster.connect_bus()
    gone = asyncio.get_running_loop().create_future()
    started = time.monotonic()

    async def on_view(msg: nats.aio.msg.Msg) -> None:
        view = SCHEDULER.decode(msg.data)
        assert isinstance(view, PlacementView)
        states = {n.node_id: n.state for n in view.nodes}
        if states.get(node_id) != "ready" and not gone.done():
            gone.set_result(time.monotonic() - started)

    await nc.subscribe(subjects.SCHED_VIEW, cb=on_view)
    try:
        return await asyncio.wait_for(gone, timeout_s)
    finally:
        await nc.close()


def test_a_killed_agent_leaves_placement_and_then_there_is_503(
    tmp_path: Path, tiny_model: Path
) -> None:
    with Cluster(tmp_path, heartbeat_interval_s=HEARTBEAT_S, model_cache=tiny_model) as cluster:
        first = cluster.add_agent("fra-1", metro="fra")
        second = cluster.add_agent("fra-2", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        deadline = time.monotonic() + 30
        while {served_by(cluster) for _ in range(12)} != {"fra-1", "fra-2"}:
            assert time.monotonic() < deadline, "both agents never became routable"

        first.kill()
        killed_at = time.monotonic()
        # Three heartbeat intervals, plus the scheduler's 0.1 s sweep and slack
        # for a loaded 2-core machine.
        waited = asyncio.run(watch_until_not_ready(cluster, "fra-1", timeout_s=10))
        assert time.monotonic() - killed_at <= 3 * HEARTBEAT_S + 0.5, waited
        # Everything now goes to the survivor, and nothing failed on the way.
        assert {served_by(cluster) for _ in range(10)} == {"fra-2"}

        second.kill()
        asyncio.run(watch_until_not_ready(cluster, "fra-2", timeout_s=10))
        status, headers, body = cluster.request("/v1/chat/completions", BODY)
        assert status == 503, body
        assert {k.lower() for k in headers} >= {"retry-after"}
        # The model is still known: 503, not 404.
        assert b"no_healthy_pod" in body


def test_requests_in_the_gap_after_a_kill_go_to_the_survivor(
    tmp_path: Path, tiny_model: Path
) -> None:
    """Before the scheduler notices, NATS's no-responders answer moves the request on."""
    with Cluster(tmp_path, heartbeat_interval_s=5.0, model_cache=tiny_model) as cluster:
        first = cluster.add_agent("fra-1", metro="fra")
        cluster.add_agent("fra-2", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        deadline = time.monotonic() + 30
        while {served_by(cluster) for _ in range(12)} != {"fra-1", "fra-2"}:
            assert time.monotonic() < deadline
        first.kill()  # the view still says ready for up to 15 s
        assert {served_by(cluster) for _ in range(20)} == {"fra-2"}


def test_service_resumes_after_nats_restarts(tmp_path: Path, tiny_model: Path) -> None:
    with Cluster(tmp_path, heartbeat_interval_s=HEARTBEAT_S, model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        pids = {name: s.pid for name, s in cluster.services.items()}

        cluster.nats.restart()  # same port, same data folder
        deadline = time.monotonic() + 30
        while True:
            status, _, _ = cluster.request("/v1/chat/completions", BODY)
            if status == 200:
                break
            assert time.monotonic() < deadline, f"still {status} 30 s after NATS came back"
            time.sleep(0.2)
        assert all(s.alive() for s in cluster.services.values())
        assert {name: s.pid for name, s in cluster.services.items()} == pids
        # And streams work too.
        with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key) as sdk:
            chunks = list(sdk.chat.completions.create(
                model="volt-tiny", messages=[{"role": "user", "content": "hi"}],
                max_tokens=4, stream=True,
            ))
            assert chunks[-1].choices[0].finish_reason in {"length", "stop"}


async def _tokens_generated(engine: EngineClient) -> float:
    text = await engine.metrics()
    total = next(r for r in text.splitlines() if r.startswith("vllm:generation_tokens_total"))
    return float(total.rsplit(" ", 1)[1])


@pytest.mark.parametrize(("path", "request_body"), [
    ("/v1/chat/completions", BODY),
    ("/v1/completions", {"model": "volt-tiny", "prompt": "Once upon a time"}),
])
def test_a_client_that_disconnects_stops_generation_on_the_pod(
    two_metros: Cluster, api_port: int, path: str, request_body: dict[str, Any],
) -> None:
    socket = two_metros.engine_socket("fra-1")

    async def scenario() -> tuple[float, float, int]:
        engine = EngineClient(socket)
        try:
            http = Http1Client(port=api_port,
                               headers={"Authorization": f"Bearer {two_metros.api_key}"})
            body = json.dumps({**request_body, "max_tokens": 4000, "stream": True,
                               "volt": {"metro": "fra"}}).encode()
            response = await http.request("POST", path, body)
            assert response.status == 200
            async for _ in response.chunks():
                break  # one chunk of tokens, then the client goes away
            during = await _tokens_generated(engine)
            assert (await engine.load()).running == 1
            response.close()  # unfinished: aborts the connection
            disconnected = time.monotonic()
            while (await engine.load()).running:
                assert time.monotonic() - disconnected < 5, "the engine kept generating"
                await asyncio.sleep(0.01)
            stopped = await _tokens_generated(engine)
            await asyncio.sleep(0.5)
            after = await _tokens_generated(engine)
            return during, stopped, int(after - stopped)
        finally:
            await engine.close()

    during, stopped, later = asyncio.run(scenario())
    assert later == 0  # nothing generated once stopped
    assert stopped - during < 400  # stopped long before 4000 tokens


def test_an_openai_client_breaking_out_of_a_stream_stops_the_pod(two_metros: Cluster) -> None:
    socket = two_metros.engine_socket("ams-1")
    with openai.OpenAI(base_url=two_metros.base_url, api_key=two_metros.api_key) as sdk:
        stream = sdk.chat.completions.create(
            model="volt-tiny", messages=[{"role": "user", "content": "hi"}], max_tokens=4000,
            stream=True, extra_body={"volt": {"metro": "ams"}},
        )
        for _ in stream:
            break
        stream.close()

    async def running() -> int:
        engine = EngineClient(socket)
        try:
            deadline = time.monotonic() + 5
            while (load := await engine.load()).running and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            return load.running
        finally:
            await engine.close()

    assert asyncio.run(running()) == 0


def test_a_hung_engine_leaves_placement_fails_its_requests_over_and_restarts(
    tmp_path: Path, tiny_model: Path
) -> None:
    """SIGSTOP: the engine neither exits nor answers. Two unanswered probes take
    its node out of placement; after the hang timeout it is killed, its
    requests (non-streaming: the client saw nothing) finish on the other pod,
    and it restarts."""
    import concurrent.futures

    probing = {"engine_probe_interval_s": "0.5", "engine_hang_timeout_s": "4"}
    with Cluster(tmp_path, heartbeat_interval_s=HEARTBEAT_S, model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra", **probing)
        cluster.add_agent("fra-2", metro="fra", **probing)
        cluster.start_api()
        cluster.wait_routable()
        deadline = time.monotonic() + 30
        while {served_by(cluster) for _ in range(12)} != {"fra-1", "fra-2"}:
            assert time.monotonic() < deadline

        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            pending = [pool.submit(cluster.request, "/v1/chat/completions",
                                   {**BODY, "max_tokens": 600}, timeout_s=120)
                       for _ in range(4)]
            victim = cluster.generating(["fra-1", "fra-2"])
            engine = cluster.engine_process(victim)
            engine.suspend()  # SIGSTOP
            left_after = asyncio.run(watch_until_not_ready(cluster, victim, timeout_s=20))
            replies = [p.result(timeout=120) for p in pending]
        # Two probes of 0.5 s, then the next heartbeat (0.3 s), with slack for a
        # loaded 2-core machine.
        assert left_after < 3.0, left_after
        assert [status for status, _, _ in replies] == [200] * 4, replies
        assert {json.loads(body)["volt"]["pod"] for _, _, body in replies} <= {"fra-1", "fra-2"}
        assert "engine not answering: out of placement" in cluster.services[victim].log_text()
        # The replies may all be back (failed over) before the hang timeout
        # (4 s of silence) is up: the kill comes then.
        deadline = time.monotonic() + 20
        while "engine hung: killing it" not in cluster.services[victim].log_text():
            assert time.monotonic() < deadline, "the hung engine was never killed"
            time.sleep(0.2)
        psutil.wait_procs([engine], timeout=5)  # logged just before the kill
        assert not engine.is_running() or engine.status() == psutil.STATUS_ZOMBIE
        # A new engine, and the node serves again.
        deadline = time.monotonic() + 60
        while victim not in {served_by(cluster) for _ in range(6)}:
            assert time.monotonic() < deadline, "the restarted engine never served"
        assert cluster.engine_process(victim).pid != engine.pid


def test_a_pod_killed_under_a_request_fails_over(tmp_path: Path, tiny_model: Path) -> None:
    """Non-streaming: the client has seen nothing, so the request moves to another pod."""
    import concurrent.futures

    with Cluster(tmp_path, heartbeat_interval_s=HEARTBEAT_S, model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.add_agent("fra-2", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        deadline = time.monotonic() + 30
        while {served_by(cluster) for _ in range(12)} != {"fra-1", "fra-2"}:
            assert time.monotonic() < deadline

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(cluster.request, "/v1/chat/completions",
                                  {**BODY, "max_tokens": 1500}, timeout_s=120)
            victim = cluster.generating(["fra-1", "fra-2"])
            cluster.services[victim].kill()
            status, _, body = pending.result(timeout=120)
        assert status == 200, body
        reply = json.loads(body)
        assert reply["volt"]["pod"] != victim
        assert reply["usage"]["completion_tokens"] > 0


def test_a_stream_whose_pod_dies_ends_with_an_error_and_done(
    tmp_path: Path, tiny_model: Path
) -> None:
    with Cluster(tmp_path, heartbeat_interval_s=HEARTBEAT_S, model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable()

        async def scenario() -> bytes:
            http = Http1Client(port=cluster.api_port,
                               headers={"Authorization": f"Bearer {cluster.api_key}"})
            # Greedy: the tiny model then never ends its turn early (sampled, it
            # may stop by itself before the kill lands, and the stream ends well).
            body = json.dumps({**BODY, "max_tokens": 4000, "stream": True,
                               "temperature": 0}).encode()
            try:
                response = await http.request("POST", "/v1/chat/completions", body)
                assert response.status == 200
                received = b""
                async for data in response.chunks():
                    received += data
                    if received.count(b"data: ") >= 3 and cluster.services["fra-1"].alive():
                        cluster.services["fra-1"].kill()  # tokens were already sent
                return received
            finally:
                http.close()

        started = time.monotonic()
        received = asyncio.run(scenario())
        events = [e for e in received.split(b"\n\n") if e.startswith(b"data: ")]
        assert events[-1] == b"data: [DONE]"
        error = json.loads(events[-2][len(b"data: "):])
        assert "error" in error, events[-3:]
        assert error["error"]["type"] == "service_unavailable"
        assert b'"content"' in b"".join(events[:-2])  # real tokens came first
        assert time.monotonic() - started < 30  # ended by failover, not by the deadline
