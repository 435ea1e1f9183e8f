"""Bad bytes on the bus never crash a service; the agent listens on nothing."""

from __future__ import annotations

import asyncio

import psutil

from volt.testing import Cluster
from volt.wire import subjects

GARBAGE = [b"", b"\x00", b"\xc1", b"not msgpack at all", b"\x81\xa4kind\xa5bogus",
           b"\x82\xa4kind\xaenode.heartbeat\xa1v\x09"]


def test_garbage_on_every_subject_is_dropped_and_service_continues(two_metros: Cluster) -> None:
    async def spray() -> None:
        nc = await two_metros.connect_bus()
        targets = [
            *(subjects.node_event("fra-1", event) for event in subjects.NODE_EVENTS),
            *(subjects.attest("fra-1", step) for step in subjects.ATTEST_STEPS),
            subjects.SCHED_VIEW, subjects.SCHED_VIEW_GET, subjects.SCHED_PLACE,
            subjects.infer("fra", "fra-1"), subjects.cancel("fra", "fra-1"),
            subjects.infer("ams", "ams-1"),
        ]
        for subject in targets:
            for data in GARBAGE:
                await nc.publish(subject, data, reply="volt.fra.reply.nobody.x")
        # Replies addressed to the API's reply subjects, for requests that do not exist.
        await nc.publish("volt.fra.reply.api-nope.abc", b"\xc1")
        await nc.flush()
        await nc.close()

    asyncio.run(spray())
    for service in two_metros.services.values():
        assert service.alive(), service.name
    for metro in ("fra", "ams"):
        status, _, body = two_metros.request("/v1/chat/completions", {
            "model": "volt-tiny", "max_tokens": 1, "volt": {"metro": metro},
            "messages": [{"role": "user", "content": "still there?"}],
        })
        assert status == 200, body
    assert b"dropped wire message" in (two_metros.logs / "scheduler.log").read_bytes()


def test_the_agent_opens_no_listening_port(two_metros: Cluster) -> None:
    for name in ("fra-1", "ams-1"):
        agent = psutil.Process(two_metros.services[name].pid)
        listening = [c for c in agent.net_connections(kind="all") if c.status == "LISTEN"]
        assert listening == []
        # Its only outbound TCP connection is to NATS.
        remote = {c.raddr.port for c in agent.net_connections(kind="inet") if c.raddr}
        assert remote == {two_metros.nats.port}
