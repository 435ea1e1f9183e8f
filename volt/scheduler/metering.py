"""Moving usage records from JetStream into the store.

A durable pull consumer takes batches, the ledger stores them (idempotently:
the request id is the key) and only then are they acknowledged. A crash
anywhere between means a redelivery, which the ledger absorbs: every request
is counted exactly once. Undecodable messages are acknowledged and dropped
(counted by the wire codec), so they cannot block the queue.
"""

from __future__ import annotations

import logging

from nats.aio.client import Client
from nats.aio.msg import Msg

from volt.store import UsageLedger
from volt.wire import USAGE, UsageRecord, subjects
from volt.wire.jetstream import USAGE_STREAM_CONFIG, consume

log = logging.getLogger(__name__)

DURABLE = "volt-usage-store"


class UsageSink:
    def __init__(self, ledger: UsageLedger, *, batch: int = 256) -> None:
        self.ledger = ledger
        self.batch = batch
        self.stored = 0

    async def run(self, nc: Client) -> None:
        await consume(nc, USAGE_STREAM_CONFIG, subjects.USAGE_ALL, DURABLE, batch=self.batch,
                      handle=self._store)

    async def _store(self, messages: list[Msg]) -> None:
        records: list[UsageRecord] = []
        for message in messages:
            batch = USAGE.decode_or_drop(message.data)
            if batch is not None:
                records.extend(batch.records)
        await self.ledger.record(records)
        self.stored += len(records)
