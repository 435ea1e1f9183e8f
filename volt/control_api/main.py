"""``volt api``: the API process (Quart on Hypercorn)."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import ASGIFramework

from volt.config import ConfigError, VoltConfig
from volt.control_api.app import create_asgi

log = logging.getLogger(__name__)


async def run_api(config: VoltConfig) -> None:
    if not config.nats.url:
        raise ConfigError("nats.url: the API needs a NATS URL (VOLT_NATS_URL)")
    app = create_asgi(config)
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"{config.api.host}:{config.api.port}"]
    hypercorn.accesslog = None
    hypercorn.keep_alive_timeout = 75
    # Hypercorn closes a keep-alive connection after 1,000 requests by default,
    # which makes busy clients reconnect every few seconds.
    hypercorn.keep_alive_max_requests = 1_000_000
    hypercorn.include_server_header = False
    hypercorn.graceful_timeout = 5
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(cast(ASGIFramework, app), hypercorn, shutdown_trigger=stop.wait)
    )
    log.info("api listening", extra={"bind": hypercorn.bind[0]})
    try:
        await asyncio.shield(server)
    except asyncio.CancelledError:
        stop.set()  # graceful: finish in-flight responses, then after_serving
        await server
        raise
