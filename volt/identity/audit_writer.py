"""The audit log's single writer, run by the scheduler.

A durable JetStream pull consumer takes batches of events from the API
replicas, appends them to the Merkle tree in the store (``AuditLog.append``,
idempotent by event id) and only then acknowledges them, so a crash anywhere
between means a redelivery that the log absorbs: every event is in the log
exactly once. A signed checkpoint follows every ``checkpoint_every`` events,
and at least every ``checkpoint_interval_s`` while events arrive.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nats.aio.client import Client
from nats.aio.msg import Msg

from volt.identity.audit_format import Checkpoint
from volt.identity.audit_log import AuditLog
from volt.identity.merkle import Frontier
from volt.wire import IDENTITY, AuditBatch, AuditEvent, subjects
from volt.wire.jetstream import AUDIT_STREAM_CONFIG, consume

log = logging.getLogger(__name__)
DURABLE = "volt-audit-log"


class AuditWriter:
    def __init__(self, audit_log: AuditLog, key: Ed25519PrivateKey, *,
                 checkpoint_every: int = 1000, checkpoint_interval_s: float = 5.0,
                 batch: int = 64, clock: Callable[[], float] = time.monotonic) -> None:
        self.log = audit_log
        self.key = key
        self.checkpoint_every = checkpoint_every
        self.checkpoint_interval_s = checkpoint_interval_s
        self.batch = batch
        self.clock = clock
        self.frontier: Frontier | None = None
        self.last_checkpoint: Checkpoint | None = None
        self._last_checkpoint_at = clock()

    async def prepare(self) -> None:
        self.frontier = await self.log.frontier()
        self.last_checkpoint = await self.log.latest_checkpoint()
        if self.uncheckpointed():
            await self.checkpoint()

    def uncheckpointed(self) -> int:
        """Events in the log that no checkpoint covers yet."""
        assert self.frontier is not None
        return self.frontier.size - (self.last_checkpoint.tree_size
                                     if self.last_checkpoint else 0)

    async def append(self, events: list[AuditEvent]) -> int:
        assert self.frontier is not None
        added = await self.log.append(self.frontier, events)
        pending = self.uncheckpointed()
        due = self.clock() - self._last_checkpoint_at >= self.checkpoint_interval_s
        if pending >= self.checkpoint_every or (pending and due):
            await self.checkpoint()
        return added

    async def checkpoint(self) -> Checkpoint:
        assert self.frontier is not None
        self.last_checkpoint = await self.log.sign_checkpoint(self.frontier, self.key)
        self._last_checkpoint_at = self.clock()
        return self.last_checkpoint

    async def run(self, nc: Client) -> None:
        await self.prepare()
        await consume(nc, AUDIT_STREAM_CONFIG, subjects.AUDIT_EVENTS, DURABLE, batch=self.batch,
                      handle=self._append, idle=self._quiet)

    async def _append(self, messages: list[Msg]) -> None:
        events: list[AuditEvent] = []
        for message in messages:
            batch = IDENTITY.decode_or_drop(message.data)
            if isinstance(batch, AuditBatch):
                events.extend(batch.events)
        await self.append(events)

    async def _quiet(self) -> None:
        if self.uncheckpointed():  # nothing arriving: checkpoint what came in
            await self.checkpoint()
