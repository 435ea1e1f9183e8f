"""What every engine process shares: its socket, its error body, its server.

Engines (the CPU engine, the embedding engine) are plain ASGI apps on
uvicorn, as ``vllm serve`` is, listening on a Unix socket that only this user
can reach (uvicorn's own would be 0666).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path
from typing import Any

import msgspec

from volt.asgi import Send
from volt.protocol.common import ErrorDetail, ErrorResponse

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()


class EngineRequestError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def body(self) -> bytes:
        return _json.encode(ErrorResponse(error=ErrorDetail(
            message=self.message, type=self.type, param=None, code=self.code
        )))


async def send_text(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"text/plain; charset=utf-8"),
        (b"content-length", str(len(body)).encode()),
    ]})
    await send({"type": "http.response.body", "body": body})


def bind_private_socket(path: Path) -> socket.socket:
    """A listening Unix socket only this user can connect to."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # a stale socket from a crashed engine
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o177)
    try:
        sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(1024)
    return sock


def bind_loopback_port(port: int) -> socket.socket:
    """A TCP socket on 127.0.0.1: only for benchmarks that put another gateway
    (which cannot dial a Unix socket) in front of this engine."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    return sock


async def serve_engine(app: Any, socket_path: Path | None, port: int | None,
                       model_id: str) -> None:
    """Serve ``app`` until SIGTERM or SIGINT (uvicorn handles them)."""
    import uvicorn

    sock = bind_private_socket(socket_path) if socket_path is not None \
        else bind_loopback_port(port or 0)
    config = uvicorn.Config(
        app, http="httptools", lifespan="off", access_log=False, log_config=None,
        log_level="warning", timeout_keep_alive=300,
    )
    log.info("engine listening", extra={
        "socket": str(socket_path or sock.getsockname()), "model": model_id,
    })
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        sock.close()
