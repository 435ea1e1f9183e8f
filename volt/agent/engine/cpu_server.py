"""The CPU engine: an OpenAI-compatible HTTP server on a Unix socket.

It speaks the same protocol as ``vllm serve`` (the subset the agent uses:
``/v1/chat/completions`` streaming and not, ``/v1/models``, ``/health``,
``/metrics`` with vLLM's metric names), so one agent-side client drives either
engine. Run as ``python -m volt.agent.engine.cpu_server --socket PATH ...``;
the agent supervises it as a child process.

A client that disconnects cancels its request: aiohttp cancels the handler
(``handler_cancellation=True``) and the backend's generator frees the slot.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import time
import uuid
from pathlib import Path

import msgspec
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from volt.agent.engine.backends import (
    Backend,
    EngineFailure,
    InstantBackend,
    SamplingParams,
    TransformersBackend,
)
from volt.agent.engine.tiny_model import MODEL_ID
from volt.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
)
from volt.protocol.common import CompletionUsage, ErrorDetail, ErrorResponse, Model, ModelList

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()
_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_DONE = b"data: [DONE]\n\n"


def _error(status: int, message: str, type_: str, code: str | None = None) -> web.Response:
    body = ErrorResponse(error=ErrorDetail(message=message, type=type_, param=None, code=code))
    return web.Response(status=status, body=_json.encode(body), content_type="application/json")


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


class EngineServer:
    def __init__(self, backend: Backend, *, default_max_tokens: int = 256) -> None:
        self.backend = backend
        self.default_max_tokens = default_max_tokens
        self.metrics = EngineMetrics(backend.model_id, backend)
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self.chat_completions)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_get("/metrics", self.prometheus)
        self.app.router.add_get("/health", self.health)

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        listing = ModelList(data=[Model(id=self.backend.model_id, created=0, owned_by="volt")])
        return web.Response(body=_json.encode(listing), content_type="application/json")

    async def prometheus(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        try:
            req = _request_decoder.decode(await request.read())
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            return _error(400, f"Invalid request: {exc}", "invalid_request_error")
        if req.model != self.backend.model_id:
            return _error(
                404, f"The model `{req.model}` does not exist.", "invalid_request_error",
                "model_not_found",
            )
        prompt_ids = self.backend.encode_chat([(m.role, m.text()) for m in req.messages])
        room = self.backend.max_context - len(prompt_ids)
        limit = req.token_limit()
        if room <= 0 or (limit is not None and limit > room):
            return _error(
                400,
                f"This model's maximum context length is {self.backend.max_context} tokens; "
                f"the prompt has {len(prompt_ids)} and {limit or 1} more were requested.",
                "invalid_request_error", "context_length_exceeded",
            )
        params = SamplingParams(
            max_new_tokens=limit or min(self.default_max_tokens, room),
            temperature=req.temperature,
        )
        request_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        if req.stream:
            return await self._stream(request, req, request_id, prompt_ids, params)
        return await self._complete(req, request_id, prompt_ids, params)

    async def _complete(
        self, req: ChatCompletionRequest, request_id: str, prompt_ids: list[int],
        params: SamplingParams,
    ) -> web.Response:
        pieces: list[str] = []
        finish_reason: str | None = None
        generated = 0
        metrics = self.metrics
        metrics.waiting += 1
        started = False
        try:
            async for event in self.backend.generate(request_id, prompt_ids, params):
                if not started:
                    metrics.waiting -= 1
                    metrics.running += 1
                    started = True
                generated += len(event.pieces)
                metrics.generation_tokens.inc(len(event.pieces))
                pieces.extend(event.pieces)
                finish_reason = event.finish_reason or finish_reason
        except EngineFailure as exc:
            return _error(500, str(exc), "server_error")
        finally:
            if started:
                metrics.running -= 1
            else:
                metrics.waiting -= 1
        completion = ChatCompletion(
            id=request_id,
            created=int(time.time()),
            model=req.model,
            choices=[
                Choice(
                    index=0,
                    message=AssistantMessage(content="".join(pieces)),
                    finish_reason=finish_reason,
                )
            ],
            usage=CompletionUsage(
                prompt_tokens=len(prompt_ids),
                completion_tokens=generated,
                total_tokens=len(prompt_ids) + generated,
            ),
        )
        return web.Response(body=_json.encode(completion), content_type="application/json")

    async def _stream(
        self, request: web.Request, req: ChatCompletionRequest, request_id: str,
        prompt_ids: list[int], params: SamplingParams,
    ) -> web.StreamResponse:
        response = web.StreamResponse(headers=_SSE_HEADERS)
        await response.prepare(request)
        created = int(time.time())
        model = req.model

        def sse(delta: Delta, finish_reason: str | None = None) -> bytes:
            chunk = ChatCompletionChunk(
                id=request_id, created=created, model=model,
                choices=[ChunkChoice(index=0, delta=delta, finish_reason=finish_reason)],
            )
            return b"data: " + _json.encode(chunk) + b"\n\n"

        out = [sse(Delta(role="assistant", content=""))]
        generated = 0
        metrics = self.metrics
        metrics.waiting += 1
        started = False
        try:
            async for event in self.backend.generate(request_id, prompt_ids, params):
                if not started:
                    metrics.waiting -= 1
                    metrics.running += 1
                    started = True
                generated += len(event.pieces)
                metrics.generation_tokens.inc(len(event.pieces))
                out.extend(sse(Delta(content=piece)) for piece in event.pieces if piece)
                if event.finish_reason is not None:
                    out.append(sse(Delta(), event.finish_reason))
                # One write for everything produced together: fewer syscalls.
                await response.write(b"".join(out))
                out.clear()
        except EngineFailure as exc:
            error = ErrorResponse(
                error=ErrorDetail(message=str(exc), type="server_error", param=None, code=None)
            )
            await response.write(b"data: " + _json.encode(error) + b"\n\n" + _DONE)
            return response
        finally:
            if started:
                metrics.running -= 1
            else:
                metrics.waiting -= 1
        if req.stream_options is not None and req.stream_options.include_usage:
            usage = ChatCompletionChunk(
                id=request_id, created=created, model=model, choices=[],
                usage=CompletionUsage(
                    prompt_tokens=len(prompt_ids), completion_tokens=generated,
                    total_tokens=len(prompt_ids) + generated,
                ),
            )
            out.append(b"data: " + _json.encode(usage) + b"\n\n")
        out.append(_DONE)
        await response.write(b"".join(out))
        await response.write_eof()
        return response


def _prepare_socket_dir(socket_path: Path) -> None:
    socket_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        socket_path.unlink()  # a stale socket from a crashed engine


async def serve(server: EngineServer, socket_path: Path, stop: asyncio.Event) -> None:
    _prepare_socket_dir(socket_path)
    runner = web.AppRunner(server.app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.UnixSite(runner, str(socket_path))
    await site.start()
    os.chmod(socket_path, 0o600)
    log.info("engine listening", extra={
        "socket": str(socket_path), "model": server.backend.model_id,
    })
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
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

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(server, args.socket, stop)

    import uvloop

    uvloop.run(run())


if __name__ == "__main__":
    main()
