"""Sending inference requests to pods over NATS and receiving their replies.

One subscription per API replica (``volt.*.reply.<replica>.*``) receives every
pod's replies; they are routed to per-request queues by the request id at the
end of the subject. Requests go to the pod's metro-local subject. If no agent
listens there (it died since the last view), NATS answers at once with a
no-responders status, which arrives here as ``NO_RESPONDERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
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


class InferenceClient:
    def __init__(self, nc: Client, replica_id: str) -> None:
        self.nc = nc
        self.replica_id = subjects.token(replica_id)
        self._queues: dict[str, asyncio.Queue[Reply]] = {}

    async def start(self) -> None:
        await self.nc.subscribe(
            subjects.reply_wildcard(self.replica_id), cb=self._on_reply,
            pending_msgs_limit=1 << 20, pending_bytes_limit=256 << 20,
        )

    async def _on_reply(self, msg: Msg) -> None:
        queue = self._queues.get(msg.subject.rpartition(".")[2])
        if queue is None:
            return  # a late reply for a request that already ended
        if is_no_responders(msg):
            queue.put_nowait(NO_RESPONDERS)
            return
        reply = REPLY.decode_or_drop(msg.data)
        if reply is not None:
            queue.put_nowait(reply)

    async def send(self, node: NodeView, request: InferenceRequest) -> asyncio.Queue[Reply]:
        """Publish ``request`` to ``node``; its replies arrive on the returned queue."""
        queue: asyncio.Queue[Reply] = asyncio.Queue()
        self._queues[request.request_id] = queue
        await self.nc.publish(
            subjects.infer(node.metro, node.node_id),
            encode(request),
            reply=subjects.reply(node.metro, self.replica_id, request.request_id),
        )
        return queue

    def forget(self, request_id: str) -> None:
        self._queues.pop(request_id, None)

    async def cancel(self, node: NodeView, request_id: str) -> None:
        self.forget(request_id)
        with contextlib.suppress(Exception):
            await self.nc.publish(
                subjects.cancel(node.metro, node.node_id), encode(Cancel(request_id=request_id))
            )
