"""Sending inference requests to pods over NATS and receiving their replies.

One subscription per API replica (``volt.*.reply.<replica>.*``) receives every
pod's replies; they are routed to per-request channels by the request id at
the end of the subject. Requests go to the pod's metro-local subject.

A pod can vanish under a request in two ways, and both arrive on the
request's channel as ``PodGone``: no agent listens on its subject (it died
since the last view; NATS answers at once with a no-responders status), or
the scheduler's view stops offering it while the request runs (it was killed
or partitioned mid-generation; ``pods_lost``). The caller retries on another
pod if the client has seen nothing yet, and ends the stream with an error
otherwise, so no request waits for its deadline on a dead pod.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from typing import Final as FinalType

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError

from volt.control_api.errors import PayloadTooLarge
from volt.wire import (
    REPLIES,
    REPLY,
    Cancel,
    InferenceRequest,
    NodeView,
    ReplyBatch,
    encode,
    subjects,
)
from volt.wire.bus import is_no_responders
from volt.wire.messages import ReplyMessage


class PodGone:
    """The pod serving a request went away (see the module docstring)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def __repr__(self) -> str:
        return f"PodGone({self.reason!r})"


NO_RESPONDERS: FinalType = PodGone("no agent listens on the pod's subject")
POD_LOST: FinalType = PodGone("the pod left placement while serving the request")

Reply = ReplyMessage | PodGone


class ReplyChannel:
    """The replies of one request, in order.

    Lighter than ``asyncio.Queue`` plus a timeout per wait, which is paid once
    per token: a deque, at most one waiting future, and one timer for the
    request's deadline, armed at the first wait and cancelled by ``close``.
    """

    __slots__ = ("_deadline", "_expired", "_items", "_loop", "_timer", "_waiter")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._items: deque[Reply] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._loop = loop
        self._timer: asyncio.TimerHandle | None = None
        self._deadline = -1.0
        self._expired = False

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
            if deadline != self._deadline:  # the first wait (or a new deadline)
                self.close()
                self._deadline, self._expired = deadline, False
                self._timer = self._loop.call_at(deadline, self._expire)
            if self._expired:
                raise TimeoutError
            waiter = self._waiter = self._loop.create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        return self._items.popleft()

    def _expire(self) -> None:
        self._timer = None
        self._expired = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(TimeoutError())

    def close(self) -> None:
        """No more waits: drop the deadline's timer (``InferenceClient.forget``)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class InferenceClient:
    def __init__(self, nc: Client, replica_id: str) -> None:
        self.nc = nc
        self.replica_id = subjects.token(replica_id)
        self._channels: dict[str, ReplyChannel] = {}
        self._node_of: dict[str, str] = {}
        self._by_node: dict[str, set[str]] = {}

    async def start(self) -> None:
        await self.nc.subscribe(
            subjects.reply_wildcard(self.replica_id), cb=self._on_reply,
            pending_msgs_limit=1 << 20, pending_bytes_limit=256 << 20,
        )

    async def _on_reply(self, msg: Msg) -> None:
        last = msg.subject.rpartition(".")[2]
        if last == subjects.BATCH:
            batch = REPLIES.decode_or_drop(msg.data)
            if isinstance(batch, ReplyBatch):
                for one in batch.replies:
                    # Only this replica's own requests: a batch cannot reach others'.
                    if (channel := self._channels.get(one.request_id)) is not None:
                        channel.put(one)
            return
        channel = self._channels.get(last)
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
        channel = ReplyChannel(asyncio.get_running_loop())
        self._channels[request.request_id] = channel
        self._node_of[request.request_id] = node.node_id
        self._by_node.setdefault(node.node_id, set()).add(request.request_id)
        try:
            await self.nc.publish(
                subjects.infer(node.metro, node.node_id),
                encode(request),
                reply=subjects.reply(node.metro, self.replica_id, request.request_id),
            )
        except BaseException as exc:
            self.forget(request.request_id)  # no reply will come: no channel left behind
            if isinstance(exc, MaxPayloadError):
                raise PayloadTooLarge(
                    f"The request is larger than the {self.nc.max_payload} bytes one message "
                    "to a pod may carry.") from None
            raise
        return channel

    def forget(self, request_id: str) -> None:
        channel = self._channels.pop(request_id, None)
        if channel is not None:
            channel.close()
        node_id = self._node_of.pop(request_id, None)
        if node_id is not None:
            on_node = self._by_node.get(node_id)
            if on_node is not None:
                on_node.discard(request_id)
                if not on_node:
                    del self._by_node[node_id]

    def pods_lost(self, node_ids: set[str]) -> None:
        """Wake every request in flight on these nodes with ``POD_LOST``."""
        for node_id in node_ids:
            for request_id in list(self._by_node.get(node_id, ())):
                channel = self._channels.get(request_id)
                if channel is not None:
                    channel.put(POD_LOST)

    async def cancel(self, node: NodeView, request_id: str) -> None:
        self.forget(request_id)
        with contextlib.suppress(Exception):
            await self.nc.publish(
                subjects.cancel(node.metro, node.node_id), encode(Cancel(request_id=request_id))
            )
