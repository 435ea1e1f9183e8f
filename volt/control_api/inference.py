"""Sending inference requests to pods over NATS and receiving their replies.

One subscription per API replica (``volt.*.reply.<replica>.*``) receives every
pod's replies; they are routed to per-request channels by the request id at
the end of the subject. Requests go to the pod's metro-local subject. If no
agent listens there (it died since the last view), NATS answers at once with
a no-responders status, which arrives here as ``NO_RESPONDERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Final as FinalType

from nats.aio.client import Client
from nats.aio.msg import Msg

from volt.wire import REPLY, Cancel, InferenceRequest, NodeView, encode, subjects
from volt.wire.bus import is_no_responders
from volt.wire.messages import ReplyMessage


class _NoResponders:
    def __repr__(self) -> str:
        return "NO_RESPONDERS"


NO_RESPONDERS: FinalType = _NoResponders()

Reply = ReplyMessage | _NoResponders


class ReplyChannel:
    """The replies of one request, in order.

    Lighter than ``asyncio.Queue`` plus ``wait_for`` (which wraps every wait in
    a new Task): a deque and at most one waiting future, with the deadline
    enforced by ``asyncio.timeout_at`` on the caller's own task.
    """

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        self._items: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None

    def put(self, reply: Reply) -> None:
        self._items.append(reply)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pending(self) -> bool:
        return bool(self._items)

    def take(self) -> Reply:
        """The next reply that already arrived (check ``pending`` first)."""
        return self._items.popleft()

    async def get(self, deadline: float) -> Reply:
        """The next reply; ``TimeoutError`` at ``deadline`` (event-loop time)."""
        if not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout_at(deadline):
                    await self._waiter
            finally:
                self._waiter = None
        return self._items.popleft()


class InferenceClient:
    def __init__(self, nc: Client, replica_id: str) -> None:
        self.nc = nc
        self.replica_id = subjects.token(replica_id)
        self._channels: dict[str, ReplyChannel] = {}

    async def start(self) -> None:
        await self.nc.subscribe(
            subjects.reply_wildcard(self.replica_id), cb=self._on_reply,
            pending_msgs_limit=1 << 20, pending_bytes_limit=256 << 20,
        )

    async def _on_reply(self, msg: Msg) -> None:
        channel = self._channels.get(msg.subject.rpartition(".")[2])
        if channel is None:
            return  # a late reply for a request that already ended
        if is_no_responders(msg):
            channel.put(NO_RESPONDERS)
            return
        reply = REPLY.decode_or_drop(msg.data)
        if reply is not None:
            channel.put(reply)

    async def send(self, node: NodeView, request: InferenceRequest) -> ReplyChannel:
        """Publish ``request`` to ``node``; its replies arrive on the returned channel."""
        channel = ReplyChannel()
        self._channels[request.request_id] = channel
        await self.nc.publish(
            subjects.infer(node.metro, node.node_id),
            encode(request),
            reply=subjects.reply(node.metro, self.replica_id, request.request_id),
        )
        return channel

    def forget(self, request_id: str) -> None:
        self._channels.pop(request_id, None)

    async def cancel(self, node: NodeView, request_id: str) -> None:
        self.forget(request_id)
        with contextlib.suppress(Exception):
            await self.nc.publish(
                subjects.cancel(node.metro, node.node_id), encode(Cancel(request_id=request_id))
            )
