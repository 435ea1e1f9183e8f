"""The CPU engine: an OpenAI-compatible HTTP server on a Unix socket.

It speaks the same protocol as ``vllm serve`` (the subset the agent uses:
``/v1/chat/completions`` and ``/v1/completions``, streaming and not, ``/v1/models``, ``/health``,
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
import time
import uuid
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from volt.agent.engine.backends import (
    AdapterError,
    Backend,
    EngineFailure,
    InstantBackend,
    PacedBackend,
    SamplingParams,
    TokenEvent,
    TransformersBackend,
)
from volt.agent.engine.http_server import EngineRequestError, send_text, serve_engine
from volt.agent.engine.sampling import TokenLogprob as SampledLogprob
from volt.agent.engine.shapes import ChatShape, Shape, TextShape
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
from volt.protocol.chat import ChatCompletionRequest, StreamOptions
from volt.protocol.common import CompletionUsage, Model, ModelList, PromptTokensDetails
from volt.protocol.completions import CompletionRequest

log = logging.getLogger(__name__)

_json = msgspec.json.Encoder()
_chat_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_text_decoder = msgspec.json.Decoder(CompletionRequest)
_DONE = b"data: [DONE]\n\n"
MAX_BODY_BYTES = 16 * 1024 * 1024


class LoadLoraAdapter(msgspec.Struct, forbid_unknown_fields=False):
    lora_name: str
    lora_path: str


class UnloadLoraAdapter(msgspec.Struct, forbid_unknown_fields=False):
    lora_name: str


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


@dataclass(frozen=True, slots=True)
class Generation:
    """One request, whichever endpoint it came from: what to generate and how
    to write it. Choice ``i`` continues prompt ``i // n``."""

    shape: Shape
    prompts: list[list[int]]
    n: int
    params: SamplingParams
    stream: bool
    stream_options: StreamOptions | None
    score_prompts: int | None = None
    """``echo`` with ``logprobs``: the prompts' own logprobs, with this many
    alternatives each, go before the completion's."""
    adapter: str | None = None
    """A tuned model: the LoRA adapter that generates (None: the base model)."""

    @property
    def choices(self) -> int:
        return len(self.prompts) * self.n

    @property
    def prompt_tokens(self) -> int:
        return sum(len(p) for p in self.prompts)

    def usage(self, generated: int, cached: int = 0) -> CompletionUsage:
        prompt = self.prompt_tokens
        return CompletionUsage(
            prompt_tokens=prompt, completion_tokens=generated, total_tokens=prompt + generated,
            # As vLLM with --enable-prompt-tokens-details: the details only when known.
            prompt_tokens_details=PromptTokensDetails(cached_tokens=cached) if cached else None,
        )


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
            await self.generate(receive, send, self._prepare_chat)
        elif route == ("POST", "/v1/completions"):
            await self.generate(receive, send, self._prepare_text)
        elif route == ("GET", "/health"):
            await send_text(send, 200, b"ok")
        elif route == ("GET", "/metrics"):
            await send_text(send, 200, generate_latest(self.metrics.registry))
        elif route == ("GET", "/v1/models"):
            names = [self.backend.model_id, *self.backend.adapter_names()]
            listing = ModelList(data=[Model(id=name, created=0, owned_by="volt", object="model")
                                      for name in names])
            await send_json(send, 200, _json.encode(listing))
        elif route == ("POST", "/v1/load_lora_adapter"):
            await self.adapter_call(receive, send, load=True)
        elif route == ("POST", "/v1/unload_lora_adapter"):
            await self.adapter_call(receive, send, load=False)
        else:
            error = EngineRequestError(404, f"No route {route[0]} {route[1]}", "not_found")
            await send_json(send, 404, error.body())

    async def adapter_call(self, receive: Receive, send: Send, *, load: bool) -> None:
        """vLLM's runtime LoRA API: ``{"lora_name", "lora_path"}`` to load,
        ``{"lora_name"}`` to unload."""
        try:
            body = msgspec.json.decode(await read_body(receive, 64 * 1024),
                                       type=LoadLoraAdapter if load else UnloadLoraAdapter)
        except Disconnected:
            return
        except (BodyTooLarge, msgspec.DecodeError, msgspec.ValidationError) as exc:
            error = EngineRequestError(400, f"Invalid request: {exc}", "invalid_request_error")
            await send_json(send, 400, error.body())
            return
        try:
            if isinstance(body, LoadLoraAdapter):
                await asyncio.to_thread(self.backend.load_adapter, body.lora_name,
                                        Path(body.lora_path))
            elif not self.backend.unload_adapter(body.lora_name):
                raise AdapterError(f"adapter {body.lora_name} is not loaded")
        except AdapterError as exc:
            error = EngineRequestError(400, str(exc), "invalid_request_error")
            await send_json(send, 400, error.body())
            return
        await send_text(send, 200, b"ok")

    async def generate(
        self, receive: Receive, send: Send, prepare: Callable[[bytes], Generation]
    ) -> None:
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
            job = prepare(body)
        except Disconnected:
            return
        except BodyTooLarge:
            error = EngineRequestError(413, "request body too large", "invalid_request_error")
            await send_json(send, 413, error.body())
            return
        except EngineRequestError as error:
            await send_json(send, error.status, error.body())
            return
        self.metrics.prompt_tokens.inc(job.prompt_tokens)
        if job.score_prompts is not None and isinstance(job.shape, TextShape):
            top = job.score_prompts
            job.shape.prompt_logprobs = [
                await asyncio.to_thread(self.backend.prompt_logprobs, prompt, top)
                for prompt in job.prompts]
        async with CancelOnDisconnect(receive) as guard:
            if job.stream:
                await self._stream(send, guard, job)
            else:
                await self._complete(send, guard, job)

    def _decode(self, decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
        try:
            req = decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineRequestError(
                400, f"Invalid request: {exc}", "invalid_request_error"
            ) from exc
        if req.model != self.backend.model_id and req.model not in self.backend.adapter_names():
            raise EngineRequestError(
                404, f"The model `{req.model}` does not exist.", "invalid_request_error",
                "model_not_found",
            )
        return req

    def _prepare_chat(self, body: bytes) -> Generation:
        req: ChatCompletionRequest = self._decode(_chat_decoder, body)
        if req.response_format is not None and req.response_format.type != "text":
            raise EngineRequestError(
                400, f"response_format `{req.response_format.type}` is not supported by this "
                "engine (the CPU engine cannot constrain its output); use a vLLM pod for it.",
                "invalid_request_error", "unsupported_parameter",
            )
        prompt_ids = self.backend.encode_chat([(m.role, m.text()) for m in req.messages])
        params = self._sampling(req, [prompt_ids], req.token_limit(),
                                (req.top_logprobs or 0) if req.logprobs else None)
        shape = ChatShape(f"chatcmpl-{uuid.uuid4().hex}", int(time.time()), req.model,
                          self.backend.token_bytes)
        return Generation(shape, [prompt_ids], req.n, params, req.stream, req.stream_options,
                          adapter=self._adapter(req.model))

    def _prepare_text(self, body: bytes) -> Generation:
        req: CompletionRequest = self._decode(_text_decoder, body)
        vocab = self.backend.vocab_size()
        prompts: list[list[int]] = []
        for prompt in req.prompts():
            if isinstance(prompt, str):
                prompts.append(self.backend.encode_text(prompt))
            elif max(prompt) >= vocab:
                raise EngineRequestError(
                    400, f"Token id {max(prompt)} is outside the vocabulary (size {vocab}).",
                    "invalid_request_error",
                )
            else:
                prompts.append(list(prompt))
        if not all(prompts):
            raise EngineRequestError(400, "The prompt is empty.", "invalid_request_error")
        params = self._sampling(req, prompts, req.token_limit(), req.logprobs)
        echo = None
        if req.echo:
            echo = [p if isinstance(p, str) else self.backend.decode(p) for p in req.prompts()]
        shape = TextShape(f"cmpl-{uuid.uuid4().hex}", int(time.time()), req.model,
                          self.backend.token_bytes, echo, req.n)
        adapter = self._adapter(req.model)
        if adapter is not None and req.echo and req.logprobs is not None:
            raise EngineRequestError(
                400, "`echo` with `logprobs` is not supported for tuned models on this engine.",
                "invalid_request_error", "unsupported_parameter")
        return Generation(shape, prompts, req.n, params, req.stream, req.stream_options,
                          score_prompts=req.logprobs if req.echo else None, adapter=adapter)

    def _adapter(self, model: str) -> str | None:
        return None if model == self.backend.model_id else model

    def _sampling(self, req: ChatCompletionRequest | CompletionRequest,
                  prompts: list[list[int]], limit: int | None,
                  top_logprobs: int | None) -> SamplingParams:
        longest = max(len(p) for p in prompts)
        room = self.backend.max_context - longest
        if room <= 0 or (limit is not None and limit > room):
            raise EngineRequestError(
                400,
                f"This model's maximum context length is {self.backend.max_context} tokens; "
                f"the prompt has {longest} and {limit or 1} more were requested.",
                "invalid_request_error", "context_length_exceeded",
            )
        stop = (req.stop,) if isinstance(req.stop, str) else tuple(req.stop or ())
        return SamplingParams(
            max_new_tokens=limit or min(self.default_max_tokens, room),
            temperature=req.temperature,
            top_p=req.top_p,
            seed=req.seed,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            top_logprobs=top_logprobs,
            stop=stop,
        )

    async def _generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams,
        adapter: str | None = None,
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
                self.backend.generate(request_id, prompt_ids, params, adapter)
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
        self, request_id: str, job: Generation
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        """The events of every choice, as (index, event); each choice is its own
        request in the batch (with seed + its number among its prompt's
        choices, when a seed is given)."""
        if job.choices == 1:  # no fan-out layer for the common case
            return self._one_choice(request_id, job.prompts[0], job.params, job.adapter)
        return self._fan_out(request_id, job)

    async def _one_choice(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams,
        adapter: str | None,
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        async with contextlib.aclosing(
                self._generate(request_id, prompt_ids, params, adapter)) as events:
            async for event in events:
                yield 0, event

    async def _fan_out(
        self, request_id: str, job: Generation
    ) -> AsyncGenerator[tuple[int, TokenEvent], None]:
        params, n = job.params, job.n
        queue: asyncio.Queue[tuple[int, TokenEvent | BaseException | None]] = asyncio.Queue()

        async def run(index: int) -> None:
            seeded = params if params.seed is None else dataclasses.replace(
                params, seed=params.seed + index % n
            )
            try:
                async with contextlib.aclosing(
                    self._generate(f"{request_id}-{index}", job.prompts[index // n], seeded,
                                   job.adapter)
                ) as events:
                    async for event in events:
                        queue.put_nowait((index, event))
                queue.put_nowait((index, None))
            except BaseException as exc:
                queue.put_nowait((index, exc))
                raise

        tasks = [asyncio.create_task(run(i)) for i in range(job.choices)]
        try:
            remaining = job.choices
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

    async def _complete(self, send: Send, guard: CancelOnDisconnect, job: Generation) -> None:
        count = job.choices
        pieces: list[list[str]] = [[] for _ in range(count)]
        logprobs: list[list[SampledLogprob]] = [[] for _ in range(count)]
        finish: list[str | None] = [None] * count
        generated = cached = 0
        try:
            async with contextlib.aclosing(self._choices(job.shape.request_id, job)) as events:
                async for index, event in events:
                    generated += event.tokens
                    cached = max(cached, event.cached_tokens)
                    pieces[index].extend(event.pieces)
                    logprobs[index].extend(event.logprobs)
                    finish[index] = event.finish_reason or finish[index]
        except EngineFailure as exc:
            guard.finish()
            await send_json(send, 500, EngineRequestError(500, str(exc), "server_error").body())
            return
        body = job.shape.completion(
            ["".join(p) for p in pieces], finish,
            logprobs if job.params.top_logprobs is not None else None,
            job.usage(generated, cached),
        )
        guard.finish()
        await send_json(send, 200, body)

    async def _stream(self, send: Send, guard: CancelOnDisconnect, job: Generation) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": SSE_HEADERS})
        shape = job.shape
        options = job.stream_options
        continuous = options is not None and options.continuous_usage_stats
        with_logprobs = job.params.top_logprobs is not None
        # The pre-encoded frames serve the common case: one choice, no logprobs.
        frames = shape.frames() if job.choices == 1 and not with_logprobs else None
        generated = cached = 0

        def usage_so_far() -> CompletionUsage | None:
            return job.usage(generated, cached) if continuous else None

        out = shape.opening(job.choices)
        unfinished = job.choices
        try:
            async with contextlib.aclosing(self._choices(shape.request_id, job)) as events:
                async for index, event in events:
                    generated += event.tokens
                    cached = max(cached, event.cached_tokens)
                    pieces = [piece for piece in event.pieces if piece]
                    if frames is not None and pieces:
                        # With continuous usage, the last frame of what was produced
                        # together carries the count so far.
                        out.append(frames.tokens(pieces[:-1]))
                        out.append(frames.token(pieces[-1], usage_so_far()))
                    elif pieces or event.logprobs:
                        out.append(shape.chunk(
                            index, "".join(pieces),
                            logprobs=event.logprobs if with_logprobs else None,
                            usage=usage_so_far(),
                        ))
                    if event.finish_reason is not None:
                        out.append(shape.chunk(index, None, event.finish_reason))
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
            out.append(shape.usage_chunk(job.usage(generated, cached)))
        out.append(_DONE)
        guard.finish()
        await send({"type": "http.response.body", "body": b"".join(out)})


async def serve(server: EngineServer, socket_path: Path | None, port: int | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then release the model."""
    try:
        await serve_engine(server, socket_path, port, server.backend.model_id)
    finally:
        server.backend.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="volt-cpu-engine", description=__doc__)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", type=Path)
    where.add_argument("--port", type=int, help="127.0.0.1 TCP instead (benchmarks only)")
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--model-id", default=MODEL_ID)
    parser.add_argument("--mode", choices=["model", "instant", "paced"], default="model")
    parser.add_argument("--ttft-ms", type=float, default=100.0, help="paced: first token after")
    parser.add_argument("--itl-ms", type=float, default=20.0, help="paced: then one token every")
    parser.add_argument("--schedule", choices=["batch", "stream"], default="batch",
                        help="paced: one step for all streams, or a clock per stream")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--default-max-tokens", type=int, default=256)
    args = parser.parse_args(argv)

    from volt.logs import configure_logging

    configure_logging("engine")
    backend: Backend
    if args.mode == "instant":
        backend = InstantBackend(args.model_dir, args.model_id)
    elif args.mode == "paced":
        backend = PacedBackend(args.model_dir, args.model_id, ttft_s=args.ttft_ms / 1000,
                               itl_s=args.itl_ms / 1000, schedule=args.schedule)
    else:
        backend = TransformersBackend(args.model_dir, args.model_id, threads=args.threads)
    server = EngineServer(backend, default_max_tokens=args.default_max_tokens)

    import uvloop

    uvloop.run(serve(server, args.socket, args.port))


if __name__ == "__main__":
    main()
