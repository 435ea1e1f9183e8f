"""Moving usage records from JetStream into the store.

A durable pull consumer takes batches, the ledger stores them (idempotently:
the request id is the key) and only then are they acknowledged. A crash
anywhere between means a redelivery, which the ledger absorbs: every request
is counted exactly once. Undecodable messages are acknowledged and dropped
(counted by the wire codec), so they cannot block the queue.
"""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client

from volt.store import UsageLedger
from volt.wire import USAGE, UsageRecord, subjects
from volt.wire.jetstream import ensure_usage_stream

log = logging.getLogger(__name__)

DURABLE = "volt-usage-store"


class UsageSink:
    def __init__(self, ledger: UsageLedger, *, batch: int = 256) -> None:
        self.ledger = ledger
        self.batch = batch
        self.stored = 0

    async def run(self, nc: Client) -> None:
        js = nc.jetstream()
        backoff = 0.2
        subscription = None
        while True:
            try:
                if subscription is None:
                    await ensure_usage_stream(nc)
                    subscription = await js.pull_subscribe(
                        subjects.USAGE_ALL, durable=DURABLE, stream=subjects.USAGE_STREAM
                    )
                try:
                    messages = await subscription.fetch(batch=self.batch, timeout=1)
                except TimeoutError:
                    continue
                records: list[UsageRecord] = []
                for message in messages:
                    batch = USAGE.decode_or_drop(message.data)
                    if batch is not None:
                        records.extend(batch.records)
                await self.ledger.record(records)
                for message in messages:
                    await message.ack()
                self.stored += len(records)
                backoff = 0.2
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # NATS away, store busy: unacked batches come back
                log.warning("usage sink: %s", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
