"""Publishing the pod's usage records to JetStream, where the scheduler stores them.

Every request this pod serves ends in exactly one ``UsageRecord`` (completed,
cancelled or failed). Records wait in a bounded queue and go out as one
``UsageBatch`` message every ``linger_s`` (or sooner when a batch fills).
Per-request publishing cost more than the request itself: a JetStream round
trip here and a store transaction in the scheduler for every request
(measured: ~1.9 ms of scheduler CPU per request at concurrency 1). Usage shows
up a fraction of a second later instead; nobody bills in real time.

JetStream keeps the batches on disk until the scheduler has stored them, so
neither an API nor a scheduler restart loses or doubles a record. Records
still in this queue when the agent itself is killed (at most ``linger_s`` of
them) are lost; the queue is drained on a clean stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import Counter

from volt.wire import UsageBatch, UsageRecord, encode, subjects
from volt.wire.jetstream import ensure_usage_stream

log = logging.getLogger(__name__)

DROPPED = Counter("volt_usage_records_dropped_total",
                  "Usage records dropped because the queue to JetStream was full")
MAX_BATCH = 500


class UsagePublisher:
    def __init__(self, metro: str, *, max_pending: int = 100_000,
                 linger_s: float = 0.25) -> None:
        self.subject = subjects.usage(metro)
        self.linger_s = linger_s
        self._pending: deque[UsageRecord] = deque()
        self._max_pending = max_pending
        self._wakeup = asyncio.Event()

    def record(self, record: UsageRecord) -> None:
        if len(self._pending) >= self._max_pending:
            self._pending.popleft()
            DROPPED.inc()
            log.error("usage queue full: dropped the oldest record")
        self._pending.append(record)
        self._wakeup.set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def run(self, nc: Client) -> None:
        """Publish until cancelled; on cancel, try once more to drain the queue."""
        js = nc.jetstream()
        backoff = 0.1
        stream_ready = False
        try:
            while True:
                if not self._pending:
                    self._wakeup.clear()
                    await self._wakeup.wait()
                if len(self._pending) < MAX_BATCH:
                    await asyncio.sleep(self.linger_s)  # let the batch gather
                try:
                    if not stream_ready:
                        await ensure_usage_stream(nc)
                        stream_ready = True
                    await self._publish_batch(js)
                    backoff = 0.1
                except Exception as exc:  # NATS down or JetStream busy: keep, retry
                    log.warning("usage publish failed: %s", type(exc).__name__)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 5.0)
        finally:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    while self._pending:
                        await self._publish_batch(js)

    async def _publish_batch(self, js: JetStreamContext) -> None:
        batch = [self._pending[i] for i in range(min(MAX_BATCH, len(self._pending)))]
        await js.publish(self.subject, encode(UsageBatch(records=batch)), timeout=5)
        for _ in batch:  # only once JetStream has them
            self._pending.popleft()
