"""The CPU engine: an OpenAI-compatible HTTP server on a Unix socket.

It speaks the same protocol as ``vllm serve`` (the subset the agent uses:
``/v1/chat/completions`` streaming and not, ``/v1/models``, ``/health``,
``/metrics`` with vLLM's metric names), so one agent-side client drives either
engine, and it serves the way vLLM does: an ASGI app on uvicorn. The app is
plain ASGI because the agent calls it for every request (a framework would
cost more per request than the instant backend's whole answer).

Run as ``python -m volt.agent.engine.cpu_server --socket PATH ...``; the agent
supervises it as a child process. The socket is created 0600 by this process
(uvicorn's own would be 0666). A client that disconnects cancels its request
(``CancelOnDisconnect``), and the backend frees its slot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncGenerator
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from volt.agent.engine.backends import (
    Backend,
    EngineFailure,
    InstantBackend,
    SamplingParams,
    TokenEvent,
    TransformersBackend,
)
from volt.agent.engine.sampling import TokenLogprob as SampledLogprob
from volt.agent.engine.tiny_model import MODEL_ID
from volt.asgi import (
    SSE_HEADERS,
    BodyTooLarge,
    CancelOnDisconnect,
    Disconnected,
    Receive,
    Scope,
    Send,
    read_body,
    send_json,
)
from volt.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    TokenLogprob,
    TopLogprob,
)
from volt.protocol.common import CompletionUsage, ErrorDetail, ErrorResponse, Model, ModelList

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_DONE = b"data: [DONE]\n\n"
MAX_BODY_BYTES = 16 * 1024 * 1024


class EngineRequestError(Exception):
    def __init__(self, status: int, message: str, type_: str, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code = status, message, type_, code

    def body(self) -> bytes:
        return _json.encode(ErrorResponse(error=ErrorDetail(
            message=self.message, type=self.type, param=None, code=self.code
        )))


class EngineMetrics:
    """vLLM's metric names, so the agent reads vLLM and this engine alike."""

    def __init__(self, model_id: str, backend: Backend) -> None:
        self.registry = CollectorRegistry()
        labels = {"model_name": model_id}
        self.running = 0
        self.waiting = 0
        Gauge(
            "vllm:num_requests_running", "Requests being generated",
            ["model_name"], registry=self.registry,
        ).labels(**labels).set_function(lambda: self.running)
        Gauge(
            "vllm:num_requests_waiting", "Requests waiting for their first token",
            ["model_name"], registry=self.registry,
        ).labels(**labels).set_function(lambda: self.waiting)
        Gauge(
            "vllm:kv_cache_usage_perc", "Fraction of the KV cache in use",
            ["model_name"], registry=self.registry,
        ).labels(**labels).set_function(backend.kv_cache_usage)
        self.prompt_tokens = Counter(
            "vllm:prompt_tokens", "Prompt tokens processed", ["model_name"], registry=self.registry
        ).labels(**labels)
        self.generation_tokens = Counter(
            "vllm:generation_tokens", "Tokens generated", ["model_name"], registry=self.registry
        ).labels(**labels)


class TokenFrames:
    """Pre-encoded SSE frames for one stream: per token only the text is encoded.

    Equal, byte for byte, to encoding a ``ChatCompletionChunk`` per token
    (``tests/agent/test_cpu_engine.py`` checks it); 64 tokens cost one encode
    each instead of a whole chunk each.
    """

    def __init__(self, request_id: str, created: int, model: str) -> None:
        head = _json.encode(ChatCompletionChunk(
            id=request_id, created=created, model=model,
            choices=[ChunkChoice(index=0, delta=Delta(content="\x00"))],
        ))
        marker = b'"content":"\\u0000"'
        before, _, after = head.partition(marker)
        self._prefix = b"data: " + before + b'"content":'
        self._suffix = after + b"\n\n"
        # The same frame with usage: the chunk's closing brace moves after it.
        self._suffix_before_usage = after[:-1] + b',"usage":'

    def token(self, piece: str, usage: CompletionUsage | None = None) -> bytes:
        if usage is None:
            return self._prefix + _json.encode(piece) + self._suffix
        return (self._prefix + _json.encode(piece) + self._suffix_before_usage
                + _json.encode(usage) + b"}\n\n")

    def tokens(self, pieces: list[str]) -> bytes:
        """Frames for many pieces at once: the hot loop, without a call per token."""
        prefix, suffix, encode = self._prefix, self._suffix, _json.encode
        return b"".join([prefix + encode(piece) + suffix for piece in pieces])


class EngineServer:
    def __init__(self, backend: Backend, *, default_max_tokens: int = 256) -> None:
        self.backend = backend
        self.default_max_tokens = default_max_tokens
        self.metrics = EngineMetrics(backend.model_id, backend)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        route = (scope["method"], scope["path"])
        if route == ("POST", "/v1/chat/completions"):
            await self.chat_completions(receive, send)
        elif route == ("GET", "/health"):
            await _send_text(send, 200, b"ok")
        elif route == ("GET", "/metrics"):
            await _send_text(send, 200, generate_latest(self.metrics.registry))
        elif route == ("GET", "/v1/models"):
            listing = ModelList(data=[Model(id=self.backend.model_id, created=0, owned_by="volt")])
            await send_json(send, 200, _json.encode(listing))
        else:
            error = EngineRequestError(404, f"No route {route[0]} {route[1]}", "not_found")
            await send_json(send, 404, error.body())

    async def chat_completions(self, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
            req, prompt_ids, params = self._prepare(body)
        except Disconnected:
            return
        except BodyTooLarge:
            error = EngineRequestError(413, "request body too large", "invalid_request_error")
            await send_json(send, 413, error.body())
            return
        except EngineRequestError as error:
            await send_json(send, error.status, error.body())
            return
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        async with CancelOnDisconnect(receive) as guard:
            if req.stream:
                await self._stream(send, guard, req, request_id, prompt_ids, params)
            else:
                await self._complete(send, guard, req, request_id, prompt_ids, params)

    def _prepare(self, body: bytes) -> tuple[ChatCompletionRequest, list[int], SamplingParams]:
        try:
            req = _request_decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineRequestError(
                400, f"Invalid request: {exc}", "invalid_request_error"
            ) from exc
        if req.model != self.backend.model_id:
            raise EngineRequestError(
                404, f"The model `{req.model}` does not exist.", "invalid_request_error",
                "model_not_found",
            )
        prompt_ids = self.backend.encode_chat([(m.role, m.text()) for m in req.messages])
        room = self.backend.max_context - len(prompt_ids)
        limit = req.token_limit()
        if room <= 0 or (limit is not None and limit > room):
            raise EngineRequestError(
                400,
                f"This model's maximum context length is {self.backend.max_context} tokens; "
                f"the prompt has {len(prompt_ids)} and {limit or 1} more were requested.",
                "invalid_request_error", "context_length_exceeded",
            )
        if req.response_format is not None and req.response_format.type != "text":
            raise EngineRequestError(
                400, f"response_format `{req.response_format.type}` is not supported by this "
                "engine (the CPU engine cannot constrain its output); use a vLLM pod for it.",
                "invalid_request_error", "unsupported_parameter",
            )
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        params = SamplingParams(
            max_new_tokens=limit or min(self.default_max_tokens, room),
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            top_logprobs=(req.top_logprobs or 0) if req.logprobs else None,
            stop=stop,
        )
        return req, prompt_ids, params

    async def _generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[TokenEvent, None]:
        """The backend's events, with the request counted as waiting, then running.

        Consumers iterate it inside ``contextlib.aclosing``: leaving the loop
        early must close it (and the backend's generator) now, not at garbage
        collection, so the counts and the batch slot are released at once.
        """
        metrics = self.metrics
        metrics.waiting += 1
        started = False
        try:
            async with contextlib.aclosing(
                self.backend.generate(request_id, prompt_ids, params)
            ) as events:
                async for event in events:
                    if not started:
                        metrics.waiting -= 1
                        metrics.running += 1
                        started = True
                    metrics.generation_tokens.inc(event.tokens)
                    yield event
        finally:
            if started:
                metrics.running -= 1
            else:
                metrics.waiting -= 1

    def _choices(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, n: int
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        """The events of ``n`` choices, as (index, event); each choice is its own
        request in the batch (with seed + index when a seed is given)."""
        if n == 1:  # no fan-out layer for the common case
            return self._one_choice(request_id, prompt_ids, params)
        return self._fan_out(request_id, prompt_ids, params, n)

    async def _one_choice(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        async with contextlib.aclosing(self._generate(request_id, prompt_ids, params)) as events:
            async for event in events:
                yield 0, event

    async def _fan_out(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams, n: int
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

        async def run(index: int) -> None:
            seeded = params if params.seed is None else dataclasses.replace(
                params, seed=params.seed + index
            )
            try:
                async with contextlib.aclosing(
                    self._generate(f"{request_id}-{index}", prompt_ids, seeded)
                ) as events:
                    async for event in events:
                        queue.put_nowait((index, event))
                queue.put_nowait((index, None))
            except BaseException as exc:
                queue.put_nowait((index, exc))
                raise

        tasks = [asyncio.create_task(run(i)) for i in range(n)]
        try:
            remaining = n
            while remaining:
                index, item = await queue.get()
                if item is None:
                    remaining -= 1
                elif isinstance(item, BaseException):
                    raise item
                else:
                    yield index, item
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _logprobs(self, entries: list[SampledLogprob]) -> ChoiceLogprobs:
        text = self.backend.token_text

        def top(token_id: int, logprob: float) -> TopLogprob:
            piece = text(token_id)
            return TopLogprob(token=piece, logprob=logprob, bytes=list(piece.encode()))

        return ChoiceLogprobs(content=[
            TokenLogprob(token=text(e.token_id), logprob=e.logprob,
                         bytes=list(text(e.token_id).encode()),
                         top_logprobs=[top(i, lp) for i, lp in e.top])
            for e in entries
        ])

    async def _complete(
        self, send: Send, guard: CancelOnDisconnect, req: ChatCompletionRequest,
        request_id: str, prompt_ids: list[int], params: SamplingParams,
    ) -> None:
        pieces: list[list[str]] = [[] for _ in range(req.n)]
        logprobs: list[list[SampledLogprob]] = [[] for _ in range(req.n)]
        finish: list[str | None] = [None] * req.n
        generated = 0
        try:
            async with contextlib.aclosing(
                self._choices(request_id, prompt_ids, params, req.n)
            ) as events:
                async for index, event in events:
                    generated += event.tokens
                    pieces[index].extend(event.pieces)
                    logprobs[index].extend(event.logprobs)
                    finish[index] = event.finish_reason or finish[index]
        except EngineFailure as exc:
            guard.finish()
            await send_json(send, 500, EngineRequestError(500, str(exc), "server_error").body())
            return
        completion = ChatCompletion(
            id=request_id,
            created=int(time.time()),
            model=req.model,
            choices=[
                Choice(
                    index=i,
                    message=AssistantMessage(content="".join(pieces[i])),
                    finish_reason=finish[i],
                    logprobs=self._logprobs(logprobs[i]) if params.top_logprobs is not None
                    else None,
                )
                for i in range(req.n)
            ],
            usage=CompletionUsage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=generated,
                total_tokens=len(prompt_ids) + generated,
            ),
        )
        guard.finish()
        await send_json(send, 200, _json.encode(completion))

    async def _stream(
        self, send: Send, guard: CancelOnDisconnect, req: ChatCompletionRequest,
        request_id: str, prompt_ids: list[int], params: SamplingParams,
    ) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        created = int(time.time())
        model = req.model
        options = req.stream_options
        continuous = options is not None and options.continuous_usage_stats
        prompt = len(prompt_ids)
        with_logprobs = params.top_logprobs is not None
        # The pre-encoded frames serve the common case: one choice, no logprobs.
        frames = TokenFrames(request_id, created, model) if req.n == 1 and not with_logprobs \
            else None

        def usage_so_far() -> CompletionUsage | None:
            if not continuous:
                return None
            return CompletionUsage(prompt_tokens=prompt, completion_tokens=generated,
                                   total_tokens=prompt + generated)

        def sse(delta: Delta, index: int = 0, finish_reason: str | None = None,
                logprobs: ChoiceLogprobs | None = None, usage: bool = True) -> bytes:
            chunk = ChatCompletionChunk(
                id=request_id, created=created, model=model,
                choices=[ChunkChoice(index=index, delta=delta, finish_reason=finish_reason,
                                     logprobs=logprobs)],
                usage=usage_so_far() if usage else None,
            )
            return b"data: " + _json.encode(chunk) + b"\n\n"

        generated = 0
        out = [sse(Delta(role="assistant", content=""), index=i) for i in range(req.n)]
        unfinished = req.n
        try:
            async with contextlib.aclosing(
                self._choices(request_id, prompt_ids, params, req.n)
            ) as events:
                async for index, event in events:
                    generated += event.tokens
                    pieces = [piece for piece in event.pieces if piece]
                    if frames is not None and pieces:
                        # With continuous usage, the last frame of what was produced
                        # together carries the count so far.
                        out.append(frames.tokens(pieces[:-1]))
                        out.append(frames.token(pieces[-1], usage_so_far()))
                    elif pieces or event.logprobs:
                        out.append(sse(
                            Delta(content="".join(pieces)), index,
                            logprobs=self._logprobs(event.logprobs) if with_logprobs else None,
                        ))
                    if event.finish_reason is not None:
                        out.append(sse(Delta(), index, event.finish_reason, usage=False))
                        unfinished -= 1
                        if not unfinished:
                            break  # the rest goes out with usage and [DONE], in one write
                    # One write for everything produced together: fewer syscalls.
                    await send({"type": "http.response.body", "body": b"".join(out),
                                "more_body": True})
                    out.clear()
        except EngineFailure as exc:
            error = EngineRequestError(500, str(exc), "server_error")
            guard.finish()
            await send({"type": "http.response.body",
                        "body": b"data: " + error.body() + b"\n\n" + _DONE})
            return
        if options is not None and options.include_usage:
            usage = ChatCompletionChunk(
                id=request_id, created=created, model=model, choices=[],
                usage=CompletionUsage(
                    prompt_tokens=len(prompt_ids), completion_tokens=generated,
                    total_tokens=len(prompt_ids) + generated,
                ),
            )
            out.append(b"data: " + _json.encode(usage) + b"\n\n")
        out.append(_DONE)
        guard.finish()
        await send({"type": "http.response.body", "body": b"".join(out)})


async def _send_text(send: Send, status: int, body: bytes) -> None:
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


async def serve(server: EngineServer, socket_path: Path) -> None:
    """Serve until SIGTERM or SIGINT (uvicorn handles them), then release the model."""
    import uvicorn

    sock = bind_private_socket(socket_path)
    config = uvicorn.Config(
        server, http="httptools", lifespan="off", access_log=False, log_config=None,
        log_level="warning", timeout_keep_alive=300,
    )
    log.info("engine listening", extra={
        "socket": str(socket_path), "model": server.backend.model_id,
    })
    try:
        await uvicorn.Server(config).serve(sockets=[sock])
    finally:
        sock.close()
        server.backend.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="volt-cpu-engine", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model-id", default=MODEL_ID)
    parser.add_argument("--mode", choices=["model", "instant"], default="model")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--default-max-tokens", type=int, default=256)
    args = parser.parse_args(argv)

    from volt.logs import configure_logging

    configure_logging("engine")
    backend: Backend
    if args.mode == "instant":
        backend = InstantBackend(args.model_dir, args.model_id)
    else:
        backend = TransformersBackend(args.model_dir, args.model_id, threads=args.threads)
    server = EngineServer(backend, default_max_tokens=args.default_max_tokens)

    import uvloop

    uvloop.run(serve(server, args.socket))


if __name__ == "__main__":
    main()
