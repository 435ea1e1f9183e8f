"""A small HTTP/1.1 client for Volt's two hot paths: agent → engine, and the
benchmark load generator.

Why not aiohttp here: measured on the spine's 2-core machine, aiohttp's client
cost ~250 µs of CPU per request, as much as the engine serving it, on a path
that runs for every token request. This client keeps a pool of keep-alive
connections (TCP or Unix socket), sends each request in one write and parses
responses with ``httptools`` (llhttp, the parser uvicorn uses), for ~50 µs.
It supports exactly what those paths need: a request with a body, a status,
the whole body or its chunks as they arrive, and abort.

Closing an exchange before its response is complete aborts the connection,
which is how the server learns that the client went away (the engine then
cancels generation).

Exceptions::

    HttpError
    └── ConnectionFailed     could not connect, or the connection died mid-exchange
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import cast

import httptools


class HttpError(Exception):
    pass


class ConnectionFailed(HttpError):
    pass


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self.lost = False
        self.reused = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:
            self.abort()  # bytes nobody asked for
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            exchange._fail(ConnectionFailed("malformed HTTP response"))
            self.abort()
            return
        exchange._wake()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.exchange is not None:
            self.exchange._fail(ConnectionFailed("connection lost"))

    # httptools callbacks

    def on_headers_complete(self) -> None:
        assert self.exchange is not None
        self.exchange._status(self.parser.get_status_code())

    def on_body(self, body: bytes) -> None:
        assert self.exchange is not None
        self.exchange._chunks.append(body)

    def on_message_complete(self) -> None:
        assert self.exchange is not None
        self.exchange._complete(self.parser.should_keep_alive())

    def abort(self) -> None:
        self.lost = True
        if self.transport is not None:
            self.transport.abort()


class Exchange:
    """One request's response: ``status``, then ``read()`` or ``chunks()``."""

    def __init__(self, client: Http1Client, connection: _Connection) -> None:
        self._client = client
        self._connection = connection
        self._chunks: deque[bytes] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: HttpError | None = None
        self._keep_alive = False
        self.status = 0
        self.complete = False

    # fed by the connection

    def _status(self, status: int) -> None:
        self.status = status

    def _complete(self, keep_alive: bool) -> None:
        self.complete = True
        self._keep_alive = keep_alive

    def _fail(self, error: HttpError) -> None:
        if not self.complete:
            self._error = error
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def _wait(self) -> None:
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    # for the caller

    async def start(self) -> Exchange:
        """Wait for the status line and headers."""
        while not self.status:
            if self._error is not None:
                raise self._error
            await self._wait()
        return self

    async def read(self) -> bytes:
        """The whole body."""
        while not self.complete:
            if self._error is not None:
                raise self._error
            await self._wait()
        body = b"".join(self._chunks)
        self._chunks.clear()
        return body

    async def chunks(self) -> AsyncIterator[bytes]:
        """Body bytes as they arrive, everything from one socket read at a time."""
        while True:
            if self._chunks:
                data = b"".join(self._chunks)
                self._chunks.clear()
                yield data
                continue
            if self.complete:
                return
            if self._error is not None:
                raise self._error
            await self._wait()

    def close(self) -> None:
        """Release the connection: back to the pool, or aborted if unfinished."""
        connection, self._connection.exchange = self._connection, None
        if self.complete and self._keep_alive and not connection.lost:
            self._client._release(connection)
        else:
            connection.abort()

    async def __aenter__(self) -> Exchange:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class Http1Client:
    def __init__(
        self, *, host: str = "127.0.0.1", port: int | None = None,
        unix_socket: Path | None = None, max_idle: int = 1024,
        headers: dict[str, str] | None = None,
    ) -> None:
        if (port is None) == (unix_socket is None):
            raise ValueError("give a TCP port or a Unix socket")
        self.host = host
        self.port = port
        self.unix_socket = unix_socket
        self.max_idle = max_idle
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._head_suffix = f"Host: {host}\r\n{extra}".encode("latin-1")
        self._idle: list[_Connection] = []

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            if self.unix_socket is not None:
                _, protocol = await loop.create_unix_connection(_Connection, str(self.unix_socket))
            else:
                assert self.port is not None
                _, protocol = await loop.create_connection(_Connection, self.host, self.port)
        except OSError as exc:
            raise ConnectionFailed(f"cannot connect: {exc.strerror or exc}") from exc
        return protocol

    def _release(self, connection: _Connection) -> None:
        if len(self._idle) < self.max_idle:
            connection.reused = True
            self._idle.append(connection)
        else:
            connection.abort()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for connection in idle:
            connection.abort()

    async def request(
        self, method: str, path: str, body: bytes = b"", content_type: str = "application/json"
    ) -> Exchange:
        """Send a request and wait for its status. Use the result as a context manager."""
        head = f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + self._head_suffix
        if body or method in ("POST", "PUT", "PATCH"):
            head += f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n".encode()
        payload = head + b"\r\n" + body
        while True:
            connection = None
            while self._idle:
                candidate = self._idle.pop()
                if not candidate.lost:
                    connection = candidate
                    break
            connection = connection or await self._connect()
            exchange = Exchange(self, connection)
            connection.exchange = exchange
            assert connection.transport is not None
            connection.transport.write(payload)
            try:
                return await exchange.start()
            except ConnectionFailed:
                exchange.close()
                # A kept-alive connection the server had already closed: the
                # request never reached it, so try once more on a fresh one.
                if not connection.reused or exchange.status:
                    raise
            except BaseException:
                exchange.close()
                raise
