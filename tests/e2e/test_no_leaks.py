"""Prompts, completions and keys never reach logs, the store or global subjects."""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from pathlib import Path

import nats
import openai

from volt.testing import Cluster
from volt.wire import subjects


def test_payloads_and_keys_stay_out_of_logs_store_and_global_subjects(
    two_metros: Cluster,
) -> None:
    marker = "canary-" + secrets.token_hex(8)
    seen: list[bytes] = []
    ready = threading.Event()
    stop = threading.Event()

    def listen() -> None:
        async def run() -> None:
            nc = await two_metros.connect_bus()

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
    ready.wait(10)
    completions = []
    try:
        with openai.OpenAI(base_url=two_metros.base_url, api_key=two_metros.api_key) as sdk:
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
        # Heartbeats carry the per-replica counts of these requests; wait for
        # at least one, so the check below is never vacuous.
        deadline = time.monotonic() + 10
        while not seen and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stop.set()
        listener.join(10)

    secrets_to_find = [marker.encode(), two_metros.api_key.encode()]
    secrets_to_find += [c.encode() for c in completions if len(c) >= 12]
    assert seen, "the listener saw no global traffic at all"
    for message in seen:
        for secret in secrets_to_find:
            assert secret not in message
    files = [*two_metros.logs.glob("*.log"), *Path(two_metros.data_dir).glob("volt.db*")]
    assert files
    for path in files:
        content = path.read_bytes()
        for secret in secrets_to_find:
            assert secret not in content, f"{secret[:16]!r} found in {path.name}"
