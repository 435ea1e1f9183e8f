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


async def ensure_usage_stream(nc: Client) -> None:
    """Create the usage stream if it does not exist yet (any service may be first)."""
    js = nc.jetstream()
    try:
        await js.stream_info(subjects.USAGE_STREAM)
    except NotFoundError:
        await js.add_stream(USAGE_STREAM_CONFIG)
