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
import base64
import binascii
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
from prometheus_client.parser import text_string_to_metric_families

from volt.http1 import Http1Client, HttpError
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


class _Logprobs(msgspec.Struct):
    content: list[msgspec.Raw] | None = None
    """Chat: each token's entry kept as the engine's JSON, passed through."""
    # Text completions: parallel lists, turned into chat's entries by ``entries``.
    tokens: list[str] | None = None
    token_logprobs: list[float | None] | None = None
    top_logprobs: list[dict[str, float] | None] | None = None
    text_offset: list[int] | None = None

    def entries(self) -> list[bytes]:
        """Each token's entry as JSON in chat's shape, whichever endpoint answered:
        one shape travels to the API, which writes it back as its endpoint's.
        Text completions' entries keep what chat has no place for: a null
        logprob and null alternatives (an echoed prompt's first token) and the
        engine's ``text_offset``."""
        if self.content is not None:
            return [bytes(entry) for entry in self.content]
        tokens = self.tokens or []
        chosen = self.token_logprobs or [None] * len(tokens)
        tops = self.top_logprobs or [None] * len(tokens)
        offsets: list[int | None] = [*self.text_offset] if self.text_offset else \
            [None] * len(tokens)
        return [_entry.encode(_TokenEntry(
            token=token, logprob=logprob,
            top_logprobs=None if top is None else
            [_TopEntry(token=t, logprob=lp) for t, lp in top.items()],
            text_offset=offset,
        )) for token, logprob, top, offset in zip(tokens, chosen, tops, offsets, strict=False)]


class _TopEntry(msgspec.Struct):
    token: str
    logprob: float


class _TokenEntry(msgspec.Struct, omit_defaults=True):
    token: str
    logprob: float | None
    top_logprobs: list[_TopEntry] | None
    text_offset: int | None = None


_entry = msgspec.json.Encoder()


class _ChunkChoice(msgspec.Struct):
    index: int = 0
    delta: _Delta | None = None
    text: str | None = None
    """Set instead of ``delta`` by ``/v1/completions``."""
    finish_reason: str | None = None
    logprobs: _Logprobs | None = None

    def new_text(self) -> str | None:
        return self.delta.content if self.delta is not None else self.text


class _ErrorDetail(msgspec.Struct):
    message: str = ""
    type: str = ""
    code: str | int | None = None


class _PromptDetails(msgspec.Struct):
    cached_tokens: int = 0


class EngineUsage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_tokens_details: _PromptDetails | None = None


class EngineCompletion(msgspec.Struct):
    choices: list[_Choice] = []
    usage: EngineUsage | None = None


class EngineChunk(msgspec.Struct):
    choices: list[_ChunkChoice] = []
    usage: EngineUsage | None = None
    error: _ErrorDetail | None = None
    """Set on an error event in the middle of a stream."""


class StreamBatch(msgspec.Struct):
    """The stream events that arrived together; ``done`` when ``[DONE]`` was among them."""

    chunks: list[EngineChunk]
    done: bool


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail | None = None
    # vLLM's older error shape is flat: {"message", "type", "code"}
    message: str = ""
    type: str = ""
    code: str | int | None = None


class _Embedding(msgspec.Struct):
    index: int
    embedding: str


class _EmbeddingList(msgspec.Struct):
    data: list[_Embedding]
    usage: EngineUsage = msgspec.field(default_factory=EngineUsage)


class Embedded(msgspec.Struct):
    vectors: list[bytes]
    prompt_tokens: int


_completion = msgspec.json.Decoder(EngineCompletion)
_embeddings = msgspec.json.Decoder(_EmbeddingList)
_chunks = msgspec.json.Decoder(list[EngineChunk])
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
        self._http = Http1Client(host="engine", unix_socket=socket_path)

    async def close(self) -> None:
        self._http.close()

    async def _get(self, path: str, timeout_s: float) -> tuple[int, bytes]:
        async with asyncio.timeout(timeout_s):
            async with await self._http.request("GET", path) as response:
                return response.status, await response.read()

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        try:
            status, _ = await self._get("/health", timeout_s)
        except (HttpError, TimeoutError):
            return False
        return status == 200

    async def metrics(self, timeout_s: float = 2.0) -> str:
        """The engine's Prometheus metrics, as text."""
        try:
            status, body = await self._get("/metrics", timeout_s)
        except (HttpError, TimeoutError) as exc:
            raise EngineUnavailable("engine metrics unavailable") from exc
        if status != 200:
            raise EngineUnavailable(f"engine metrics answered HTTP {status}")
        return body.decode("utf-8", "replace")

    async def load(self, timeout_s: float = 2.0) -> EngineLoad:
        return parse_load(await self.metrics(timeout_s))

    async def _post(self, path: str, body: bytes) -> bytes:
        try:
            async with await self._http.request("POST", path, body) as response:
                data = await response.read()
        except HttpError as exc:
            raise EngineUnavailable("engine connection failed") from exc
        if response.status != 200:
            raise _rejection(response.status, data)
        return data

    async def complete(self, path: str, body: bytes) -> EngineCompletion:
        data = await self._post(path, body)
        try:
            return _completion.decode(data)
        except msgspec.MsgspecError as exc:
            raise EngineError("engine sent an unreadable completion") from exc

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a LoRA adapter as model ``name`` (vLLM's runtime LoRA API; the
        CPU engine speaks it too). Already loaded: nothing to do."""
        await self._post("/v1/load_lora_adapter", msgspec.json.encode(
            {"lora_name": name, "lora_path": str(path)}))

    async def unload_adapter(self, name: str) -> None:
        await self._post("/v1/unload_lora_adapter", msgspec.json.encode({"lora_name": name}))

    async def embed(self, body: bytes) -> Embedded:
        """``/v1/embeddings``, asked for base64 (``body`` says so): the vectors'
        float32 bytes, in input order."""
        data = await self._post("/v1/embeddings", body)
        try:
            reply = _embeddings.decode(data)
            ordered = sorted(reply.data, key=lambda item: item.index)
            vectors = [base64.b64decode(item.embedding, validate=True) for item in ordered]
        except (msgspec.MsgspecError, binascii.Error) as exc:
            raise EngineError("engine sent unreadable embeddings") from exc
        return Embedded(vectors=vectors, prompt_tokens=reply.usage.prompt_tokens)

    async def stream(self, path: str, body: bytes) -> AsyncIterator[StreamBatch]:
        """Yield the chunks of an SSE completion, grouped by arrival.

        Leaving the loop early (or being cancelled) aborts the connection,
        which makes the engine cancel generation.
        """
        try:
            async with await self._http.request("POST", path, body) as response:
                if response.status != 200:
                    raise _rejection(response.status, await response.read())
                buffer = b""
                async for data in response.chunks():
                    buffer += data
                    end = buffer.rfind(b"\n\n")
                    if end < 0:
                        continue
                    block, buffer = buffer[:end], buffer[end + 2:]
                    chunks, done = parse_block(block)
                    if done:
                        # Read to the end of the response (the chunked-encoding
                        # terminator) so the connection goes back to the pool
                        # instead of being aborted as unfinished.
                        await response.read()
                    if chunks or done:
                        yield StreamBatch(chunks, done)
                    if done:
                        return
        except HttpError as exc:
            raise EngineUnavailable("engine connection lost") from exc
        raise EngineUnavailable("engine stream ended without [DONE]")


_DONE_EVENT = b"data: [DONE]"
_NEXT_EVENT = b"\n\ndata: "


def parse_block(block: bytes) -> tuple[list[EngineChunk], bool]:
    """The chunks of a block of complete SSE events (separated by blank lines),
    and whether ``[DONE]`` was among them.

    All payloads in the block are decoded as one JSON array: one msgspec call
    instead of one per token, which matters when a fast engine sends dozens of
    events at once. When every event is a single ``data: `` line (vLLM's and
    Volt's engines always send that), the array is built without a Python
    loop; anything else takes the general path.
    """
    done = False
    if _DONE_EVENT in block:
        block, _, _ = block.partition(_DONE_EVENT)
        block = block.rstrip(b"\n")
        done = True
    if not block:
        return [], done
    if block.startswith(b"data: ") and block.count(b"\n") == 2 * block.count(_NEXT_EVENT):
        array = b"[" + block[6:].replace(_NEXT_EVENT, b",") + b"]"
    else:
        array = b"[" + b",".join(_payloads(block.split(b"\n\n"))) + b"]"
        if array == b"[]":
            return [], done
    try:
        chunks = _chunks.decode(array)
    except msgspec.MsgspecError as exc:
        raise EngineError("engine sent an unreadable stream event") from exc
    for chunk in chunks:
        if chunk.error is not None:
            raise _rejection(500, msgspec.json.encode({"error": chunk.error}))
    return chunks, done


def _payloads(events: list[bytes]) -> list[bytes]:
    """The general SSE path: multi-line events, comments, ``data:`` without a space."""
    payloads = []
    for event in events:
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                payloads.append(line[5:].strip())
    return payloads
