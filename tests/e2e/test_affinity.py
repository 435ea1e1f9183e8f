"""Prefix-aware routing and session affinity on two pods in one metro."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
import pytest

from volt.testing import Cluster

pytestmark = pytest.mark.slow
SYSTEM = "You answer questions about Volt's metros, tiers and sovereign racks. " * 30


def pod(sdk: openai.OpenAI, messages: list[Any], **extra: Any) -> str:
    reply = sdk.chat.completions.create(model="volt-tiny", messages=messages, max_tokens=1,
                                        **extra)
    return str(reply.model_extra["volt"]["pod"])  # type: ignore[index]


def test_prefixes_and_sessions_find_their_pod_and_sessions_move_on(
    tmp_path: Path, tiny_model: Path
) -> None:
    with Cluster(tmp_path, heartbeat_interval_s=0.3, model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.add_agent("fra-2", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key) as sdk:
            # wait_routable returns once one pod answers; the other's engine may still be
            # starting. Wait until both have served, then check the spread afresh.
            deadline = time.monotonic() + 120
            while {pod(sdk, [{"role": "user", "content": "ready?"}]) for _ in range(10)} \
                    != {"fra-1", "fra-2"}:
                assert time.monotonic() < deadline, "the second pod never became routable"
                time.sleep(0.3)
            time.sleep(1.5)  # the view forgets the readiness requests' load
            # Without shared context, both pods take work.
            spread = {pod(sdk, [{"role": "user", "content": f"q{i}"}]) for i in range(30)}
            assert spread == {"fra-1", "fra-2"}

            # A long shared system prompt: every follow-up goes where it was served.
            def ask(i: int) -> str:
                return pod(sdk, [{"role": "system", "content": SYSTEM},
                                 {"role": "user", "content": f"question {i}"}])

            home = ask(0)
            assert {ask(i) for i in range(1, 15)} == {home}

            # A session sticks to its pod...
            session = {"extra_body": {"volt": {"session": "conversation-42"}}}
            first = pod(sdk, [{"role": "user", "content": "hi"}], **session)
            assert {pod(sdk, [{"role": "user", "content": f"turn {i}"}], **session)
                    for i in range(10)} == {first}

            # ...and moves on when that pod goes away.
            cluster.services[first].kill()
            other = ({"fra-1", "fra-2"} - {first}).pop()
            assert {pod(sdk, [{"role": "user", "content": f"after {i}"}], **session)
                    for i in range(5)} == {other}
