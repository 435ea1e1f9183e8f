"""What a pod sends back to the API replicas, gathered per replica per tick.

At a GPU's cadence a busy pod produces a token every few milliseconds for each
of hundreds of streams, and one bus message per token per stream is most of
what relaying costs. Replies to one API replica produced within one stream
interval therefore travel together, as one ``ReplyBatch`` on the replica's
batch subject. Nothing waits that should not: a stream's first token, a final
answer and an error go at once (taking whatever is pending for that replica
with them, so a request's replies never overtake each other), and a tick with
one reply sends it as itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from volt.wire import (
    EmbeddingChunk,
    Final,
    InferenceError,
    ReplyBatch,
    StreamChunk,
    encode,
)

log = logging.getLogger(__name__)

Reply = StreamChunk | EmbeddingChunk | Final | InferenceError
Publish = Callable[[str, bytes], Awaitable[None]]


class Route(NamedTuple):
    """Where one request's replies go, worked out once when it arrives (not per token)."""

    subject: str
    """The request's own reply subject."""
    batch: str | None
    """Its API replica's batch subject (``subjects.batch_reply``); None: never batched."""


class ReplyOutbox:
    def __init__(self, publish: Publish, interval_s: float) -> None:
        """``interval_s``: how long a reply may wait for others (0: never)."""
        self._publish = publish
        self.interval_s = interval_s
        # Both keyed by the replica's batch subject.
        self._pending: dict[str, list[tuple[str, Reply]]] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._flushes: set[asyncio.Task[None]] = set()

    async def send(self, route: Route, reply: Reply) -> None:
        key = route.batch
        if self.interval_s <= 0 or key is None:
            await self._send_one(route.subject, reply)
            return
        urgent = not isinstance(reply, StreamChunk) or reply.seq == 0
        pending = self._pending.get(key)
        if pending is None and urgent:
            await self._send_one(route.subject, reply)
            return
        if pending is None:
            pending = self._pending[key] = []
        pending.append((route.subject, reply))
        if urgent:
            await self._flush(key)
        elif key not in self._timers:
            self._timers[key] = asyncio.get_running_loop().call_later(
                self.interval_s, self._flush_later, key)

    def _flush_later(self, key: str) -> None:
        task = asyncio.ensure_future(self._flush_logged(key))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _flush_logged(self, key: str) -> None:
        try:
            await self._flush(key)
        except Exception as exc:  # NATS away: these replies are lost, as unbatched ones would be
            log.warning("reply batch not sent: %s", type(exc).__name__)

    async def _flush(self, key: str) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        pending = self._pending.pop(key, None)
        if not pending:
            return
        if len(pending) == 1:
            await self._send_one(*pending[0])
            return
        await self._publish(key, encode(ReplyBatch(replies=[reply for _, reply in pending])))

    async def _send_one(self, subject: str, reply: Reply) -> None:
        await self._publish(subject, encode(reply))

    async def flush_all(self) -> None:
        """Send everything pending now (the agent is stopping)."""
        for key in list(self._pending):
            with contextlib.suppress(Exception):
                await self._flush(key)
        if self._flushes:
            await asyncio.gather(*self._flushes, return_exceptions=True)
