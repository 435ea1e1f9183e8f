"""The JetStream streams Volt uses, defined once for every service that touches them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from volt.wire import subjects

USAGE_STREAM_CONFIG = StreamConfig(
    name=subjects.USAGE_STREAM,
    subjects=[subjects.USAGE_ALL],
    # Work queue: a batch is deleted once the scheduler has stored and acknowledged it.
    retention=RetentionPolicy.WORK_QUEUE,
    storage=StorageType.FILE,
    max_age=30 * 24 * 3600,  # a month to get stored, even with the scheduler down
)


AUDIT_STREAM_CONFIG = StreamConfig(
    name=subjects.AUDIT_STREAM,
    subjects=[subjects.AUDIT_EVENTS],
    # Work queue, as for usage: a batch is deleted once it is in the log.
    retention=RetentionPolicy.WORK_QUEUE,
    storage=StorageType.FILE,
    max_age=30 * 24 * 3600,
)


async def _ensure(nc: Client, config: StreamConfig) -> None:
    js = nc.jetstream()
    try:
        await js.stream_info(config.name or "")
    except NotFoundError:
        await js.add_stream(config)


async def ensure_usage_stream(nc: Client) -> None:
    """Create the usage stream if it does not exist yet (any service may be first)."""
    await _ensure(nc, USAGE_STREAM_CONFIG)


async def ensure_audit_stream(nc: Client) -> None:
    """Create the audit stream if it does not exist yet (any service may be first)."""
    await _ensure(nc, AUDIT_STREAM_CONFIG)


log = logging.getLogger(__name__)


async def consume(
    nc: Client, config: StreamConfig, subject: str, durable: str, *, batch: int,
    handle: Callable[[list[Msg]], Awaitable[None]],
    idle: Callable[[], Awaitable[None]] | None = None,
) -> None:
    """Feed batches from a durable pull consumer to ``handle``, acknowledging
    them only after it returned: a crash in between means a redelivery, which
    handlers absorb (they are idempotent). ``idle`` runs when a second passes
    with nothing. NATS or the handler failing: back off and go on."""
    js = nc.jetstream()
    backoff = 0.2
    subscription = None
    while True:
        try:
            if subscription is None:
                await _ensure(nc, config)
                subscription = await js.pull_subscribe(subject, durable=durable,
                                                       stream=config.name)
            try:
                messages = await subscription.fetch(batch=batch, timeout=1)
            except TimeoutError:
                if idle is not None:
                    await idle()
                continue
            await handle(messages)
            for message in messages:
                await message.ack()
            backoff = 0.2
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # NATS away, store busy: unacked batches come back
            log.warning("%s: %s", durable, type(exc).__name__)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
