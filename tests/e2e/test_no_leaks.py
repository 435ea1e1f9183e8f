"""Prompts, completions and keys never reach logs, the store or global subjects."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nats
import openai
import pytest

from volt.testing import Cluster
from volt.wire import subjects


@contextlib.contextmanager
def global_subjects(cluster: Cluster) -> Iterator[list[bytes]]:
    """Every message on every metadata-only subject while the block runs."""
    seen: list[bytes] = []
    ready = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        async def run() -> None:
            nc = await cluster.connect_bus()

            async def record(msg: nats.aio.msg.Msg) -> None:
                seen.append(msg.subject.encode() + b" " + msg.data)

            for family in subjects.GLOBAL_FAMILIES:  # every metadata-only subject
                await nc.subscribe(f"volt.{family}.>", cb=record)
            await nc.flush()
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await nc.close()

        asyncio.run(run())

    listener = threading.Thread(target=listen)
    listener.start()
    assert ready.wait(10), "the listener never subscribed"
    try:
        yield seen
        # Heartbeats carry the per-replica counts of the requests; wait for at
        # least one message, so the check that follows is never vacuous.
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        listener.join(10)


def assert_nowhere(cluster: Cluster, seen: list[bytes], secrets_to_find: list[bytes]) -> None:
    """Not on the global subjects, and not in any file the cluster wrote: every
    service's log (the engines' output goes to their agent's), the store, the
    JetStream store, the secrets and SVIDs."""
    assert seen, "the listener saw no global traffic at all"
    for message in seen:
        for secret in secrets_to_find:
            assert secret not in message
    # dev-api-key is where the development key is handed to its developer
    # (0600, like ~/.config/volt/credentials): the one file meant to hold it.
    files = [path for path in cluster.root.rglob("*")
             if path.is_file() and path.name != "dev-api-key"]
    assert any(path.name.startswith("volt.db") for path in files)
    assert any(path.suffix == ".log" for path in files)
    for path in files:
        try:
            content = path.read_bytes()
        except FileNotFoundError:
            continue  # JetStream removed a message block it had consumed since the listing
        for secret in secrets_to_find:
            assert secret not in content, f"{secret[:16]!r} found in {path}"


def test_payloads_and_keys_stay_out_of_logs_store_and_global_subjects(
    two_metros: Cluster,
) -> None:
    marker = "canary-" + secrets.token_hex(8)
    completions = []
    with global_subjects(two_metros) as seen, \
            openai.OpenAI(base_url=two_metros.base_url, api_key=two_metros.api_key) as sdk:
        for stream in (False, True):
            reply = sdk.chat.completions.create(
                model="volt-tiny", messages=[{"role": "user", "content": marker}],
                max_tokens=24, stream=stream,
            )
            if stream:
                completions.append("".join(
                    c.choices[0].delta.content or "" for c in reply if c.choices  # type: ignore[union-attr]
                ))
            else:
                completions.append(reply.choices[0].message.content or "")  # type: ignore[union-attr]
        # A stream the client walks away from after its first chunk (cancelled).
        cancelled = sdk.chat.completions.create(
            model="volt-tiny", messages=[{"role": "user", "content": marker + " again"}],
            max_tokens=200, stream=True)
        next(iter(cancelled))
        cancelled.close()

    secrets_to_find = [marker.encode(), two_metros.api_key.encode()]
    secrets_to_find += [c.encode() for c in completions if len(c) >= 12]
    assert_nowhere(two_metros, seen, secrets_to_find)


def test_failure_paths_leak_nothing(tmp_path: Path, tiny_model: Path) -> None:
    """A request failed over from a SIGKILLed pod, and a stream whose engine
    crashed under it: the prompts reach no log (the dying agent's and the
    crashed engine's included), no store and no global subject."""
    failed_over = "canary-failover-" + secrets.token_hex(8)
    crashed = "canary-crash-" + secrets.token_hex(8)
    with Cluster(tmp_path, heartbeat_interval_s=0.3, model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.add_agent("fra-2", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        # Both pods, or the request has nowhere to fail over to.
        cluster.wait_placeable(["fra-1", "fra-2"])
        body = {"model": "volt-tiny", "max_tokens": 1500}
        with global_subjects(cluster) as seen:
            with concurrent.futures.ThreadPoolExecutor(1) as pool:
                pending = pool.submit(cluster.request, "/v1/chat/completions", {
                    **body, "messages": [{"role": "user", "content": failed_over}],
                }, timeout_s=120)
                victim = cluster.generating(["fra-1", "fra-2"])
                cluster.services[victim].kill()
                status, _, reply = pending.result(timeout=120)
            assert status == 200, reply
            survivor = json.loads(reply)["volt"]["pod"]
            assert survivor != victim

            with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                               max_retries=0) as sdk:
                stream = sdk.chat.completions.create(
                    model="volt-tiny", messages=[{"role": "user", "content": crashed}],
                    max_tokens=4000, stream=True)  # the survivor is the only pod left
                engine = cluster.engine_process(survivor)

                def read_and_crash() -> None:
                    for chunk in stream:
                        if chunk.choices and engine.is_running():
                            engine.kill()  # the engine dies under the stream

                with pytest.raises(openai.APIError):  # the stream ends with an error event
                    read_and_crash()
        assert cluster.services[survivor].alive(), "an engine crash must not take its agent"
        assert_nowhere(cluster, seen, [failed_over.encode(), crashed.encode(),
                                       cluster.api_key.encode()])
