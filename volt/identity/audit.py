"""The API side of the audit log: one event per request, off the request path.

``AuditRecorder.record`` appends to an in-memory buffer (microseconds); a
background task publishes the buffer in batches to the ``VOLT_AUDIT``
JetStream stream and waits for JetStream's acknowledgement, so a batch is on
disk before it leaves the buffer. The scheduler appends batches to the log
(``AuditWriter``). A clean stop flushes everything; a SIGKILLed replica can
lose at most the last ``flush_interval_s`` of events.

When JetStream is away the buffer holds events; once it holds
``max_buffered`` the recorder refuses new ones (``AuditUnavailable``) and the
API answers 503: a request that cannot be audited is not served.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import time
from collections.abc import Mapping

from nats.aio.client import Client
from prometheus_client import Counter, Gauge

from volt.identity.policy import AuditLevel
from volt.identity.principal import Principal
from volt.wire import AuditBatch, AuditEvent, encode, subjects
from volt.wire.jetstream import ensure_audit_stream

log = logging.getLogger(__name__)

_PUBLISHED = Counter("volt_audit_events_published_total",
                     "Audit events acknowledged by JetStream")
_BUFFERED = Gauge("volt_audit_events_buffered", "Audit events waiting to be published")


class AuditUnavailable(Exception):
    """The audit buffer is full (JetStream unreachable for a while)."""


def new_request_id() -> str:
    return "req_" + os.urandom(12).hex()


def build_event(
    *, request_id: str, principal: Principal | None, method: str, route: str,
    resources: Mapping[str, str], status: int, client: str, body: bytes | None,
    level: AuditLevel, time_ms: int | None = None,
) -> AuditEvent:
    return AuditEvent(
        event_id="aev_" + os.urandom(10).hex(),
        time_ms=time_ms if time_ms is not None else int(time.time() * 1000),
        request_id=request_id,
        spiffe_id=principal.spiffe_id if principal else "",
        org_id=principal.org_id if principal else "",
        auth_method=principal.method.value if principal else "",
        auth_id=principal.credential_id if principal else "",
        method=method, route=route, resources=dict(resources), status=status, client=client,
        body_sha256=hashlib.sha256(body).hexdigest()
        if body and level is AuditLevel.REQUEST else "",
        level=level.value,
    )


class AuditRecorder:
    def __init__(self, *, flush_interval_s: float = 0.05, max_batch: int = 1000,
                 max_buffered: int = 100_000) -> None:
        self.flush_interval_s = flush_interval_s
        self.max_batch = max_batch
        self.max_buffered = max_buffered
        self._buffer: list[AuditEvent] = []
        self._wake = asyncio.Event()
        self._nc: Client | None = None
        self._task: asyncio.Task[None] | None = None

    def record(self, event: AuditEvent) -> None:
        if len(self._buffer) >= self.max_buffered:
            raise AuditUnavailable("the audit log cannot be reached")
        self._buffer.append(event)
        if len(self._buffer) >= self.max_batch:
            self._wake.set()

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    async def start(self, nc: Client) -> None:
        self._nc = nc
        with contextlib.suppress(Exception):  # the publisher retries until it exists
            await ensure_audit_stream(nc)
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.flush_interval_s)
            self._wake.clear()
            try:
                await self.flush()
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # JetStream away: keep the events, retry
                log.warning("audit publish failed: %s", type(exc).__name__)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def flush(self) -> None:
        """Publish everything buffered; an event leaves the buffer only once
        JetStream acknowledged it."""
        assert self._nc is not None
        js = self._nc.jetstream()
        while self._buffer:
            batch = self._buffer[: self.max_batch]
            _BUFFERED.set(len(self._buffer))
            try:
                await js.publish(subjects.AUDIT_EVENTS, encode(AuditBatch(events=batch)),
                                 timeout=5)
            except Exception as exc:
                if "no response" in str(exc).lower() or "stream" in str(exc).lower():
                    await ensure_audit_stream(self._nc)
                raise
            del self._buffer[: len(batch)]
            _PUBLISHED.inc(len(batch))
        _BUFFERED.set(0)

    async def close(self) -> None:
        """Stop, after publishing what is buffered (a clean stop loses nothing)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._nc is not None and self._buffer:
            try:
                await self.flush()
            except Exception:
                log.error("audit events could not be published at shutdown",
                          extra={"events": len(self._buffer)})
