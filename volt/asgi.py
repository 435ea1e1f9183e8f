"""Small ASGI building blocks shared by the API's hot path and the CPU engine.

Both serve their hottest routes as plain ASGI (no framework per request), and
both need the same three things: read a bounded body, answer JSON with an
explicit length, and stop the work when the client disconnects.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# Loose on purpose: Quart, Hypercorn and uvicorn each bring their own TypedDicts.
ASGIApp = Callable[..., Awaitable[None]]

JSON = (b"content-type", b"application/json")
SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache"),
               (b"x-accel-buffering", b"no")]


class Disconnected(Exception):
    """The client went away before its request was read."""


class BodyTooLarge(Exception):
    pass


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(send: Send, status: int, body: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    # An explicit length, or the server would chunk the body.
    all_headers = [JSON, (b"content-length", str(len(body)).encode()), *(headers or ())]
    await send({"type": "http.response.start", "status": status, "headers": all_headers})
    await send({"type": "http.response.body", "body": body})


class CancelOnDisconnect:
    """Cancel the current task when the client disconnects; then swallow that cancel.

    vLLM's ``with_cancellation``, with one watcher task instead of racing two::

        async with CancelOnDisconnect(receive) as guard:
            ... produce and send the response ...
            guard.finish()      # before the last send: from here on, let it complete

    The watcher starts only once the request has run ``WATCH_AFTER_S``: most
    requests on a fast pod are over by then and never pay for a task, and a
    disconnect is still noticed within that time.
    """

    WATCH_AFTER_S = 0.05

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._task: asyncio.Task[Any] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._finished = False
        self.disconnected = False

    async def _watch(self) -> None:
        while (await self._receive())["type"] != "http.disconnect":
            pass
        if not self._finished and self._task is not None:
            self.disconnected = True
            self._task.cancel()

    def finish(self) -> None:
        self._finished = True

    def _start_watching(self) -> None:
        if not self._finished:
            self._watcher = asyncio.create_task(self._watch())

    async def __aenter__(self) -> CancelOnDisconnect:
        self._task = asyncio.current_task()
        self._timer = asyncio.get_running_loop().call_later(
            self.WATCH_AFTER_S, self._start_watching
        )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if self._timer is not None:
            self._timer.cancel()
        if self._watcher is not None:
            self._watcher.cancel()
        if exc_type is asyncio.CancelledError and self.disconnected:
            assert self._task is not None
            self._task.uncancel()  # our own cancel: the client is gone, nothing to raise
            return True
        return False
