"""The agent's outbox: which replies ride together, on which subject, in which order."""

from __future__ import annotations

import asyncio

from volt.agent.outbox import ReplyOutbox, Route
from volt.wire import REPLIES, ChoiceDelta, Final, ReplyBatch, StreamChunk, subjects

ROUTE_A = Route(subjects.reply("fra", "api-1", "a"), subjects.batch_reply("fra", "api-1"))
ROUTE_B = Route(subjects.reply("fra", "api-1", "b"), subjects.batch_reply("fra", "api-1"))


def chunk(request_id: str, seq: int) -> StreamChunk:
    return StreamChunk(request_id=request_id, seq=seq, choices=[ChoiceDelta(content=str(seq))])


def final(request_id: str) -> Final:
    return Final(request_id=request_id, pod="n1", metro="fra", tier="standard")


class Bus:
    def __init__(self) -> None:
        self.sent: list[tuple[str, object]] = []

    async def publish(self, subject: str, data: bytes) -> None:
        self.sent.append((subject, REPLIES.decode(data)))


async def test_first_tokens_and_finals_go_at_once_and_the_rest_ride_together() -> None:
    bus = Bus()
    outbox = ReplyOutbox(bus.publish, interval_s=0.05)
    await outbox.send(ROUTE_A, chunk("a", 0))  # a first token never waits
    assert bus.sent == [(ROUTE_A.subject, chunk("a", 0))]
    await outbox.send(ROUTE_A, chunk("a", 1))
    await outbox.send(ROUTE_B, chunk("b", 1))
    await outbox.send(ROUTE_A, chunk("a", 2))
    assert len(bus.sent) == 1  # held for the interval
    await asyncio.sleep(0.1)
    assert bus.sent[1] == (ROUTE_A.batch, ReplyBatch(
        replies=[chunk("a", 1), chunk("b", 1), chunk("a", 2)]))
    # A final takes what is pending with it, in order, at once.
    await outbox.send(ROUTE_B, chunk("b", 2))
    await outbox.send(ROUTE_B, final("b"))
    assert bus.sent[2] == (ROUTE_B.batch, ReplyBatch(replies=[chunk("b", 2), final("b")]))
    assert len(bus.sent) == 3


async def test_a_lone_reply_goes_as_itself_and_without_an_interval_nothing_waits() -> None:
    bus = Bus()
    outbox = ReplyOutbox(bus.publish, interval_s=0.02)
    await outbox.send(ROUTE_A, chunk("a", 0))
    await outbox.send(ROUTE_A, chunk("a", 1))
    await asyncio.sleep(0.06)
    assert bus.sent[1] == (ROUTE_A.subject, chunk("a", 1))  # not a batch of one
    unbatched = Bus()
    outbox = ReplyOutbox(unbatched.publish, interval_s=0)
    for seq in range(3):
        await outbox.send(ROUTE_A, chunk("a", seq))
    never = Route(ROUTE_B.subject, None)  # a subject that names no replica
    await ReplyOutbox(unbatched.publish, interval_s=1.0).send(never, chunk("b", 1))
    assert unbatched.sent == [(ROUTE_A.subject, chunk("a", s)) for s in range(3)] + [
        (ROUTE_B.subject, chunk("b", 1))]


async def test_flush_all_sends_what_is_pending() -> None:
    bus = Bus()
    outbox = ReplyOutbox(bus.publish, interval_s=10.0)
    await outbox.send(ROUTE_A, chunk("a", 0))
    await outbox.send(ROUTE_A, chunk("a", 1))
    await outbox.send(ROUTE_B, chunk("b", 1))
    await outbox.flush_all()
    assert bus.sent[-1] == (ROUTE_A.batch, ReplyBatch(replies=[chunk("a", 1), chunk("b", 1)]))
