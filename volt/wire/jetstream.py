"""The JetStream streams Volt uses, defined once for every service that touches them."""

from __future__ import annotations

from nats.aio.client import Client
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
