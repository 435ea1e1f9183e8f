"""A pod sends completions only to a reply subject of its own metro: a request
that names any other subject (another metro's, a global one, an inbox) is
dropped, so whoever can publish a request cannot steer payloads elsewhere."""

from __future__ import annotations

import asyncio
import json
import time

import nats

from volt.testing import Cluster
from volt.wire import InferenceRequest, encode, subjects


def test_a_pod_answers_only_on_its_own_metros_reply_subjects(two_metros: Cluster) -> None:
    body = json.dumps({"model": "volt-tiny", "max_tokens": 1,
                       "messages": [{"role": "user", "content": "steer me"}]}).encode()

    async def scenario() -> dict[str, int]:
        nc = await two_metros.connect_bus()
        received: dict[str, int] = {}

        async def count(msg: nats.aio.msg.Msg) -> None:
            received[msg.subject] = received.get(msg.subject, 0) + 1

        targets = {
            "own metro": subjects.reply("fra", "test", "own"),
            "other metro": subjects.reply("ams", "test", "other"),
            "global": "volt.sched.stolen",  # a global (metadata-only) subject
            "inbox": "_INBOX.stolen",
        }
        for subject in targets.values():
            await nc.subscribe(subject, cb=count)
        for name, reply in targets.items():
            request = InferenceRequest(request_id=name.replace(" ", "-"), model="volt-tiny",
                                       stream=False, body=body,
                                       deadline_unix=time.time() + 30)
            await nc.publish(subjects.infer("fra", "fra-1"), encode(request), reply=reply)
        deadline = time.monotonic() + 20
        while targets["own metro"] not in received and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(1.0)  # time for anything misdirected to arrive
        await nc.close()
        return {name: received.get(subject, 0) for name, subject in targets.items()}

    counts = asyncio.run(scenario())
    assert counts["own metro"] > 0
    assert counts["other metro"] == counts["global"] == counts["inbox"] == 0, counts
