"""``volt api``: the API process (Quart, on uvicorn or Hypercorn)."""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import cast

from hypercorn.asyncio import serve
from hypercorn.config import Config as HypercornConfig
from hypercorn.typing import ASGIFramework

from volt.asgi import ASGIApp
from volt.config import ConfigError, VoltConfig
from volt.control_api.app import create_asgi

log = logging.getLogger(__name__)


async def run_api(config: VoltConfig) -> None:
    if not config.nats.url:
        raise ConfigError("nats.url: the API needs a NATS URL (VOLT_NATS_URL)")
    app = create_asgi(config)
    log.info("api listening", extra={
        "bind": f"{config.api.host}:{config.api.port}", "server": config.api.server,
    })
    if config.api.server == "uvicorn":
        await _serve_uvicorn(app, config)
    else:
        await _serve_hypercorn(app, config)


def listening_socket(host: str, port: int) -> socket.socket:
    """The API's listener, with SO_REUSEPORT: several API processes may share a
    port and the kernel spreads new connections over them (``api.workers``). A
    program that does not ask for it still finds the port taken."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"api.port: cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.set_inheritable(True)
    return sock


async def _serve_hypercorn(app: ASGIApp, config: VoltConfig) -> None:
    listener = listening_socket(config.api.host, config.api.port)
    hypercorn = HypercornConfig()
    hypercorn.bind = [f"fd://{listener.detach()}"]  # Hypercorn owns the descriptor now
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
    try:
        await asyncio.shield(server)
    except asyncio.CancelledError:
        stop.set()  # graceful: finish in-flight responses, then after_serving
        await server
        raise


async def _serve_uvicorn(app: ASGIApp, config: VoltConfig) -> None:
    await serve_uvicorn(app, config.api.host, config.api.port)


async def serve_uvicorn(app: ASGIApp, host: str, port: int, *, tls_cert: str = "",
                        tls_key: str = "") -> None:
    """Serve ``app`` with uvicorn on a SO_REUSEPORT listener until cancelled
    (then gracefully); over TLS with ``tls_cert`` and ``tls_key``."""
    import uvicorn

    listener = listening_socket(host, port)
    server = uvicorn.Server(uvicorn.Config(
        app, host=host, port=port, http="httptools", lifespan="on",
        access_log=False, log_config=None, log_level="warning", timeout_keep_alive=75,
        server_header=False, timeout_graceful_shutdown=5,
        ssl_certfile=tls_cert or None, ssl_keyfile=tls_key or None,
    ))
    task = asyncio.create_task(server.serve(sockets=[listener]))
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        server.should_exit = True  # graceful, as above
        await task
        raise
