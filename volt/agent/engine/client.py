"""The agent's side of the engine boundary: OpenAI HTTP over a Unix socket.

One client drives both ``vllm serve`` and Volt's CPU engine. Exceptions::

    EngineError                  the engine could not serve a request
    ├── EngineUnavailable        no answer at all (not started, restarting, crashed)
    └── EngineRejected           an HTTP error answer (carries status, code, message)

Streaming reads return every event that arrived together as one list, so the
agent forwards tokens produced in the same instant as one message while the
first token still goes out the moment it arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from volt.wire import EngineLoad


class EngineError(Exception):
    pass


class EngineUnavailable(EngineError):
    pass


class EngineRejected(EngineError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


# Lenient views of the engine's responses: only what the agent forwards.
# vLLM adds fields (reasoning_content, tool_calls, ...) that are ignored here.


class _Message(msgspec.Struct):
    content: str | None = None


class _Choice(msgspec.Struct):
    index: int = 0
    message: _Message | None = None
    finish_reason: str | None = None


class _Delta(msgspec.Struct):
    content: str | None = None


class _ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    finish_reason: str | None = None


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str = ""
    code: str | int | None = None


class EngineUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class EngineCompletion(msgspec.Struct):
    choices: list[_Choice] = []
    usage: EngineUsage | None = None


class EngineChunk(msgspec.Struct):
    choices: list[_ChunkChoice] = []
    usage: EngineUsage | None = None
    error: _ErrorDetail | None = None
    """Set on an error event in the middle of a stream."""


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | None = None
    # vLLM's older error shape is flat: {"message", "type", "code"}
    message: str = ""
    type: str = ""
    code: str | int | None = None


_completion = msgspec.json.Decoder(EngineCompletion)
_chunk = msgspec.json.Decoder(EngineChunk)
_error_body = msgspec.json.Decoder(_ErrorBody)

VLLM_RUNNING = "vllm:num_requests_running"
VLLM_WAITING = "vllm:num_requests_waiting"
VLLM_KV_CACHE = "vllm:kv_cache_usage_perc"


def _rejection(status: int, body: bytes) -> EngineRejected:
    try:
        err = _error_body.decode(body)
    except msgspec.MsgspecError:
        return EngineRejected(status, "engine_error", f"engine answered HTTP {status}")
    detail = err.error or _ErrorDetail(message=err.message, type=err.type, code=err.code)
    code = detail.code if isinstance(detail.code, str) and detail.code else (
        detail.type or "engine_error"
    )
    return EngineRejected(status, code, detail.message or f"engine answered HTTP {status}")


def parse_load(metrics_text: str) -> EngineLoad:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name in (VLLM_RUNNING, VLLM_WAITING, VLLM_KV_CACHE):
                # Sum over label sets (one per model / engine index in vLLM).
                values[sample.name] = values.get(sample.name, 0.0) + sample.value
    return EngineLoad(
        running=int(values.get(VLLM_RUNNING, 0)),
        waiting=int(values.get(VLLM_WAITING, 0)),
        kv_cache_usage=float(values.get(VLLM_KV_CACHE, 0.0)),
    )


class EngineClient:
    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.UnixConnector(path=str(self.socket_path), limit=0)
            self._session = aiohttp.ClientSession(
                base_url="http://engine",
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5),
                skip_auto_headers=("User-Agent",),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            async with self._http().get(
                "/health", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            return False

    async def load(self, timeout_s: float = 2.0) -> EngineLoad:
        try:
            async with self._http().get(
                "/metrics", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise EngineUnavailable("engine metrics unavailable") from exc
        return parse_load(text)

    async def complete(self, path: str, body: bytes) -> EngineCompletion:
        try:
            async with self._http().post(
                path, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                data = await resp.read()
                if resp.status != 200:
                    raise _rejection(resp.status, data)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise EngineUnavailable("engine connection failed") from exc
        try:
            return _completion.decode(data)
        except msgspec.MsgspecError as exc:
            raise EngineError("engine sent an unreadable completion") from exc

    async def stream(self, path: str, body: bytes) -> AsyncIterator[list[EngineChunk]]:
        """Yield the chunks of an SSE completion, grouped by arrival."""
        try:
            async with self._http().post(
                path, data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                if resp.status != 200:
                    raise _rejection(resp.status, await resp.read())
                buffer = b""
                async for data in resp.content.iter_any():
                    buffer += data
                    if b"\n\n" not in buffer:
                        continue
                    *events, buffer = buffer.split(b"\n\n")
                    chunks, done = _parse_events(events)
                    if chunks:
                        yield chunks
                    if done:
                        return
        except (aiohttp.ClientConnectionError, OSError, asyncio.IncompleteReadError) as exc:
            raise EngineUnavailable("engine connection lost") from exc
        raise EngineUnavailable("engine stream ended without [DONE]")


def _parse_events(events: list[bytes]) -> tuple[list[EngineChunk], bool]:
    chunks: list[EngineChunk] = []
    for event in events:
        for line in event.split(b"\n"):
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                return chunks, True
            try:
                chunk = _chunk.decode(payload)
            except msgspec.MsgspecError as exc:
                raise EngineError("engine sent an unreadable stream event") from exc
            if chunk.error is not None:
                raise _rejection(500, payload)
            chunks.append(chunk)
    return chunks, False
