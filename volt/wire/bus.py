"""The NATS connection every Volt service uses.

Services dial out and keep dialling: the first connection is retried until
``connect_timeout_s`` (the server may start after us under systemd or
``volt up``), and after that nats-py reconnects forever, re-subscribing on its
own. ``on_reconnect`` lets a service re-sync state it keeps from the bus (the
API re-asks for the placement view).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

log = logging.getLogger(__name__)

NO_RESPONDERS_STATUS = "503"


def is_no_responders(msg: Msg) -> bool:
    """The server's answer to a publish with a reply subject that nobody listens to."""
    return msg.headers is not None and msg.headers.get("Status") == NO_RESPONDERS_STATUS


def tls_context(svid_dir: Path) -> ssl.SSLContext:
    """Mutual TLS with this process's X.509-SVID; the bus is verified against the
    workload CA's bundle, never the system's CAs."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH,
                                         cafile=str(svid_dir / "bundle.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_cert_chain(svid_dir / "svid.pem", svid_dir / "svid-key.pem")
    return context


async def connect(
    url: str,
    name: str,
    *,
    connect_timeout_s: float = 30.0,
    on_reconnect: Callable[[], Awaitable[None]] | None = None,
    svid_dir: Path | None = None,
    tls: ssl.SSLContext | None = None,
    inbox_prefix: str | None = None,
) -> Client:
    """``svid_dir``: connect as that identity (mutual TLS), or ``tls``: with this
    context (``tls_context``; a process that renews its SVID reloads the context's
    certificate, and every reconnection presents the new one); ``inbox_prefix``:
    where request/reply answers come back (``wire/permissions.inbox_for``; the bus
    lets a process read only its own)."""
    if tls is None and svid_dir is not None:
        tls = tls_context(svid_dir)
    async def disconnected() -> None:
        log.warning("nats disconnected", extra={"nats_client": name})

    async def reconnected() -> None:
        log.info("nats reconnected", extra={"nats_client": name})
        if on_reconnect is not None:
            await on_reconnect()

    async def error(exc: Exception) -> None:
        log.warning("nats error: %s", type(exc).__name__, extra={"nats_client": name})

    deadline = time.monotonic() + connect_timeout_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return await nats.connect(
                servers=[url],
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.2,
                connect_timeout=2,
                ping_interval=5,
                max_outstanding_pings=3,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                tls=tls,
                inbox_prefix=inbox_prefix or "_INBOX",
            )
        except (TimeoutError, OSError, nats.errors.Error) as exc:
            if time.monotonic() >= deadline:
                raise ConnectionError(
                    f"could not reach NATS at {url} within {connect_timeout_s:.0f}s"
                ) from exc
            if attempt == 1 or attempt % 10 == 0:
                log.info("waiting for NATS", extra={"url": url, "attempt": attempt})
            await asyncio.sleep(0.2)


async def close(nc: Client) -> None:
    """Close at shutdown. If NATS is already gone, there is nothing left to flush."""
    try:
        await nc.close()
    except Exception as exc:
        log.info("nats closed uncleanly: %s", type(exc).__name__)
