"""What actually produces tokens inside the CPU engine.

Two backends behind one small interface:

* ``TransformersBackend`` serves the tiny model with transformers' own
  continuous batching (``ContinuousBatchingManager``): many requests share each
  forward pass, tokens stream as they are produced, cancellation frees the slot.
* ``InstantBackend`` returns fixed tokens with no model at all. ``volt bench
  overhead`` uses it so that only Volt's own overhead is measured.

Both tokenize with the tiny model's tokenizer, so usage counts are real.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from volt.agent.engine.lora import AdapterError, LoraAdapters, Step, deliver_to
from volt.agent.engine.sampling import SamplingParams, TokenLogprob, install
from volt.agent.engine.tiny_model import EOS_TOKEN, render_chatml

__all__ = ["AdapterError", "Backend", "EngineFailure", "InstantBackend", "SamplingParams",
           "StopMatcher",
           "TokenEvent", "TransformersBackend"]

log = logging.getLogger(__name__)


class EngineFailure(Exception):
    """The backend failed while generating (not the client's fault)."""


@dataclass(frozen=True, slots=True)
class TokenEvent:
    """Tokens a backend produced since its last event.

    ``pieces`` has the text of each new token; a piece is empty while its bytes
    do not yet form whole UTF-8 characters (the text arrives with a later
    token). Usage counts ``tokens``, never pieces: at the end, bytes held back
    are flushed into the last piece.
    """

    pieces: list[str]
    finish_reason: str | None = None
    tokens: int = 0
    logprobs: list[TokenLogprob] = field(default_factory=list)
    """One per token, when the request asked for log-probabilities."""
    cached_tokens: int = 0
    """Prompt tokens whose KV cache was reused (set on a request's first event)."""


@dataclass(slots=True)
class _Run:
    ended: bool = False
    """The generation finished by itself: nothing left to cancel."""


class Backend(Protocol):
    model_id: str
    max_context: int

    def encode_chat(self, messages: list[tuple[str, str]]) -> list[int]: ...

    def encode_text(self, text: str) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def vocab_size(self) -> int: ...

    def token_text(self, token_id: int) -> str: ...

    def token_bytes(self, token_id: int) -> bytes: ...

    def prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob]: ...

    def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams,
        adapter: str | None = None,
    ) -> AsyncGenerator[TokenEvent, None]: ...

    def load_adapter(self, name: str, path: Path) -> bool: ...

    def unload_adapter(self, name: str) -> bool: ...

    def adapter_names(self) -> list[str]: ...

    def kv_cache_usage(self) -> float: ...

    def close(self) -> None: ...


class _Tokenizer:
    """The raw ``tokenizers`` tokenizer: fast, and no Jinja on the hot path."""

    def __init__(self, model_dir: Path) -> None:
        from tokenizers import Tokenizer

        self._tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        eos = self._tok.token_to_id(EOS_TOKEN)
        if eos is None:
            raise EngineFailure(f"tokenizer in {model_dir} has no {EOS_TOKEN}")
        self.eos_id: int = eos

    def encode_chat(self, messages: list[tuple[str, str]]) -> list[int]:
        ids: list[int] = self._tok.encode(render_chatml(messages), add_special_tokens=False).ids
        return ids

    def encode(self, text: str) -> list[int]:
        ids: list[int] = self._tok.encode(text, add_special_tokens=False).ids
        return ids

    def decode(self, ids: list[int]) -> str:
        text: str = self._tok.decode(ids, skip_special_tokens=True)
        return text

    def vocab_size(self) -> int:
        size: int = self._tok.get_vocab_size()
        return size

    @functools.lru_cache(maxsize=65536)  # noqa: B019 - one tokenizer per engine, for its life
    def token_bytes(self, token_id: int) -> bytes:
        """The token's real bytes: a byte-level BPE token may be part of a UTF-8
        character (an emoji is often several tokens), which no string can hold."""
        piece = self._tok.id_to_token(token_id)
        if piece is None:
            return b""
        try:
            return bytes(_BYTE_OF_CHAR[char] for char in piece)
        except KeyError:  # a special token (<|im_end|>): its own text
            return piece.encode()


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level BPE alphabet (what ``tokenizers``' ByteLevel uses): each
    byte as a printable character. Inverted: character -> byte."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    chars = list(printable)
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return {chr(char): byte for byte, char in zip(printable, chars, strict=True)}


_BYTE_OF_CHAR = _byte_level_alphabet()


def logprob_text(raw: bytes) -> str:
    """A token's text for logprobs: its UTF-8, or where it holds part of a
    character, the bytes escaped (``\\xf0\\x9f``), as DeepSeek's API writes them;
    the real bytes travel beside it (chat's ``bytes``). Never U+FFFD, which would
    make different tokens look alike."""
    return raw.decode("utf-8", errors="backslashreplace")


class IncrementalDetokenizer:
    """Turns a growing token list into text pieces, one call per new token.

    Decodes a short window (TGI's prefix/read offsets) so each token costs the
    same however long the completion is, and holds back bytes that do not yet
    form a whole UTF-8 character.
    """

    def __init__(self, tokenizer: _Tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ids: list[int] = []
        self._prefix = 0
        self._read = 0

    def push(self, token_id: int) -> str:
        self._ids.append(token_id)
        prefix_text = self._tokenizer.decode(self._ids[self._prefix : self._read])
        new_text = self._tokenizer.decode(self._ids[self._prefix :])
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """Whatever was held back (at the end of the completion)."""
        prefix_text = self._tokenizer.decode(self._ids[self._prefix : self._read])
        new_text = self._tokenizer.decode(self._ids[self._prefix :])
        self._prefix = self._read = len(self._ids)
        return new_text[len(prefix_text) :]


class StopMatcher:
    """Ends a completion at the first stop string, which is not part of the text.

    Text that might be the start of a stop string is held back until the next
    piece shows whether it is.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._longest = max((len(s) for s in self.stops), default=0)
        self._pending = ""

    def feed(self, piece: str) -> tuple[str, bool]:
        """(text that may go out now, whether a stop string was reached)."""
        if not self.stops:
            return piece, False
        text = self._pending + piece
        hits = [i for i in (text.find(s) for s in self.stops) if i >= 0]
        if hits:
            self._pending = ""
            return text[: min(hits)], True
        hold = 0
        for size in range(min(len(text), self._longest - 1), 0, -1):
            if any(s.startswith(text[-size:]) for s in self.stops):
                hold = size
                break
        self._pending = text[len(text) - hold:] if hold else ""
        return text[: len(text) - hold], False

    def flush(self) -> str:
        pending, self._pending = self._pending, ""
        return pending


class _TokenizedBackend:
    """The tokenizer side of the ``Backend`` interface, the same for every backend."""

    tokenizer: _Tokenizer

    def token_text(self, token_id: int) -> str:
        return logprob_text(self.tokenizer.token_bytes(token_id))

    def token_bytes(self, token_id: int) -> bytes:
        return self.tokenizer.token_bytes(token_id)

    def encode_chat(self, messages: list[tuple[str, str]]) -> list[int]:
        return self.tokenizer.encode_chat(messages)

    def encode_text(self, text: str) -> list[int]:
        return self.tokenizer.encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids)

    def vocab_size(self) -> int:
        return self.tokenizer.vocab_size()

    def load_adapter(self, name: str, path: Path) -> bool:
        raise AdapterError("this engine mode has no model, so it serves no adapters")

    def unload_adapter(self, name: str) -> bool:
        return False

    def adapter_names(self) -> list[str]:
        return []


class PrefixHits:
    """How many prompt tokens each request found in the KV cache.

    transformers' continuous batching shares cached prefix blocks between
    requests (``allow_block_sharing``) but does not report the match. Its cache
    computes it in ``search_prefix_match``; this wraps that method to record
    the result per request. It reaches into transformers' internals (as the
    sampler does), observing only: the wrapped method's result is returned
    unchanged. The generation thread writes, the event loop reads: a lock.
    """

    def __init__(self) -> None:
        self._hits: dict[str, int] = {}
        self._lock = threading.Lock()

    def install(self) -> None:
        from transformers.generation.continuous_batching.cache import PagedAttentionCache

        original = PagedAttentionCache.search_prefix_match
        if getattr(original, "_volt_observed", False):
            return
        hits = self

        def search_prefix_match(cache: Any, request_id: str, prompt_ids: list[int]) -> int:
            matched: int = original(cache, request_id, prompt_ids)
            if matched:
                with hits._lock:
                    hits._hits[request_id] = matched
            return matched

        search_prefix_match._volt_observed = True  # type: ignore[attr-defined]
        PagedAttentionCache.search_prefix_match = search_prefix_match  # type: ignore[method-assign,assignment]

    def take(self, request_id: str) -> int:
        with self._lock:
            return self._hits.pop(request_id, 0)


class TransformersBackend(_TokenizedBackend):
    def __init__(self, model_dir: Path, model_id: str, *, threads: int = 1) -> None:
        import torch
        from transformers import AutoModelForCausalLM, GenerationConfig
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        torch.set_num_threads(threads)
        self.model_id = model_id
        self.model_dir = model_dir
        self.tokenizer = _Tokenizer(model_dir)
        self._scorer: Any = None
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        self.max_context = int(model.config.max_position_embeddings)
        # Sampling happens per request in VoltSampler; the manager only takes the
        # argmax of the one-hot rows it returns.
        generation_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=256,
            eos_token_id=self.tokenizer.eos_id,
            pad_token_id=model.config.pad_token_id,
        )
        self._manager: Any = model.init_continuous_batching(
            generation_config=generation_config,
            # 64 blocks of 256 tokens (transformers' default page size): 16k
            # tokens of this model's KV, shared prefixes included.
            continuous_batching_config=ContinuousBatchingConfig(
                num_blocks=64, max_batch_tokens=512
            ),
        )
        self.sampler = install(self._manager)
        self.prefix_hits = PrefixHits()
        self.prefix_hits.install()
        self.adapters = LoraAdapters(model_dir, self.tokenizer.eos_id)
        """Tuned models: LoRA adapters served beside this model (``lora.py``)."""
        self._manager.start()

    def prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob]:
        """Each prompt token's logprob given the tokens before it (``echo`` with
        ``logprobs``); the first has none. One forward pass of a second copy of
        the model, outside continuous batching (whose paged attention the
        batching manager owns). Blocking: call it in a thread."""
        import torch
        from transformers import AutoModelForCausalLM

        if self._scorer is None:
            self._scorer = AutoModelForCausalLM.from_pretrained(
                self.model_dir, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = self._scorer(torch.tensor([ids])).logits[0]
            distribution = torch.log_softmax(logits.float(), dim=-1)
        entries = [TokenLogprob(ids[0], None, None)]
        for position in range(1, len(ids)):
            row = distribution[position - 1]
            best: list[tuple[int, float]] = []
            if top:
                values, top_ids = torch.topk(row, top)
                best = [(int(i), float(v)) for i, v in zip(top_ids, values, strict=True)]
            entries.append(TokenLogprob(ids[position], float(row[ids[position]]), best))
        return entries

    def load_adapter(self, name: str, path: Path) -> bool:
        """Serve the LoRA adapter at ``path`` as model ``name`` (blocking)."""
        return self.adapters.load(name, path)

    def unload_adapter(self, name: str) -> bool:
        return self.adapters.unload(name)

    def adapter_names(self) -> list[str]:
        return self.adapters.names()

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams,
        adapter: str | None = None,
    ) -> AsyncGenerator[TokenEvent, None]:
        if adapter is not None:
            async with contextlib.aclosing(
                self._generate_adapter(request_id, adapter, prompt_ids, params)) as events:
                async for event in events:
                    yield event
            return
        outputs: asyncio.Queue[Any] = asyncio.Queue()
        self.sampler.register(request_id, params)
        self._manager.register_result_handler(request_id, outputs.put_nowait)
        self._manager.add_request(
            prompt_ids, request_id=request_id, max_new_tokens=params.max_new_tokens, streaming=True
        )
        seen = 0

        async def next_step() -> Step:
            nonlocal seen
            output = await outputs.get()
            new_tokens = output.generated_tokens[seen:]
            seen = len(output.generated_tokens)
            logprobs = (self.sampler.take_logprobs(request_id, len(new_tokens))
                        if params.top_logprobs is not None else [])
            return Step(new_tokens, output.is_finished(), logprobs,
                        error="generation failed" if output.error is not None else None)

        run = _Run()
        try:
            async with contextlib.aclosing(self._events(
                    params, next_step, lambda: self.prefix_hits.take(request_id), run)) as events:
                async for event in events:
                    yield event
        finally:
            if not run.ended:
                # The consumer went away (client disconnect) or a stop string
                # ended it: stop generating now. A cancelled request gets no
                # final output, so its result handler would stay registered;
                # drop it ourselves.
                self._manager.cancel_request(request_id)
                router = self._manager.output_router
                with router._lock:
                    router.result_handlers.pop(request_id, None)
            self.sampler.forget(request_id)
            self.prefix_hits.take(request_id)

    async def _generate_adapter(
        self, request_id: str, adapter: str, prompt_ids: list[int], params: SamplingParams
    ) -> AsyncGenerator[TokenEvent, None]:
        steps: asyncio.Queue[Step] = asyncio.Queue()
        try:
            active = self.adapters.start(request_id, adapter, prompt_ids, params,
                                         deliver_to(asyncio.get_running_loop(), steps))
        except AdapterError as exc:
            raise EngineFailure(str(exc)) from exc
        run = _Run()
        try:
            async with contextlib.aclosing(
                    self._events(params, steps.get, lambda: 0, run)) as events:
                async for event in events:
                    yield event
        finally:
            if not run.ended:
                self.adapters.cancel(active)

    async def _events(self, params: SamplingParams, next_step: Callable[[], Awaitable[Step]],
                      cached_tokens: Callable[[], int], run: _Run
                      ) -> AsyncGenerator[TokenEvent, None]:
        """A generation's raw token steps as text events: incremental
        detokenizing, stop strings, EOS as ``stop`` and the limit as ``length``.
        ``run.ended``: the generation finished by itself (nothing to cancel)."""
        detokenizer = IncrementalDetokenizer(self.tokenizer)
        stopper = StopMatcher(params.stop)
        cached: int | None = None
        while True:
            step = await next_step()
            if cached is None:  # the prefix was matched before the first token
                cached = cached_tokens()
            if step.error is not None:
                run.ended = True
                raise EngineFailure(step.error)
            new_tokens = step.tokens
            produced = len(new_tokens)  # EOS included: it was generated (as vLLM counts)
            finished = step.finished
            run.ended = finished
            finish_reason = None
            if new_tokens and new_tokens[-1] == self.tokenizer.eos_id:
                new_tokens = new_tokens[:-1]
                finish_reason = "stop"
            elif finished:
                finish_reason = "length"
            pieces = [detokenizer.push(t) for t in new_tokens]
            if finished and (rest := detokenizer.flush()):
                if pieces:
                    pieces[-1] += rest
                else:
                    pieces.append(rest)
            stopped = False
            for i, piece in enumerate(pieces):
                pieces[i], stopped = stopper.feed(piece)
                if stopped:
                    del pieces[i + 1:]
                    break
            if stopped:
                yield TokenEvent(pieces, "stop", tokens=produced, logprobs=step.logprobs,
                                 cached_tokens=cached)
                return  # still running unless it also finished: the caller cancels
            if finished and (held := stopper.flush()):
                pieces.append(held)
            yield TokenEvent(pieces, finish_reason if finished else None, tokens=produced,
                             logprobs=step.logprobs, cached_tokens=cached)
            if finished:
                return
            cached = 0  # reported once

    def kv_cache_usage(self) -> float:
        processor = self._manager.batch_processor
        if processor is None:
            return 0.0
        free = float(processor.cache.compute_free_capacity(relative=True))
        return max(0.0, min(1.0, 1.0 - free))

    def close(self) -> None:
        self.adapters.close()
        self._manager.stop(block=True, timeout=5)


INSTANT_TEXT = "Volt serves tokens from sovereign metros. "


class PacedBackend(_TokenizedBackend):
    """A GPU's token cadence without a GPU: the first token ``ttft_s`` after the
    request, then one every ``itl_s``, each its own event, as a decoding step
    produces it. No model: a 2-core machine can pace hundreds of streams, so
    what Volt spends relaying each token can be measured at a GPU's rate.

    ``schedule="batch"`` is how a GPU engine with continuous batching paces
    them: one decoding step every ``itl_s`` for all running streams, so every
    stream's token comes out of the same step and a new request's first token
    comes with the first step after its ``ttft_s``. ``"stream"`` gives each
    stream its own clock from its start, spreading tokens evenly over time:
    the worst case for a relay, which then meets them one at a time."""

    def __init__(self, model_dir: Path, model_id: str, *, ttft_s: float, itl_s: float,
                 schedule: Literal["batch", "stream"] = "batch") -> None:
        self.model_id = model_id
        self.max_context = 1 << 20
        self.tokenizer = _Tokenizer(model_dir)
        self.ttft_s, self.itl_s, self.schedule = ttft_s, itl_s, schedule
        ids = self.tokenizer.encode(INSTANT_TEXT)
        self._pieces = [self.tokenizer.decode([i]) for i in ids]

    def first_token_at(self, started: float) -> float:
        """When a request that arrived at ``started`` (loop time) gets its first token."""
        ready = started + self.ttft_s
        if self.schedule == "stream":
            return ready
        return math.ceil(ready / self.itl_s) * self.itl_s  # the next step of the batch

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams,
        adapter: str | None = None,
    ) -> AsyncGenerator[TokenEvent, None]:
        loop = asyncio.get_running_loop()
        first, n, pieces = self.first_token_at(loop.time()), params.max_new_tokens, self._pieces
        for i in range(n):
            # On a schedule, so a late wake-up does not push every later token back.
            delay = first + i * self.itl_s - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            yield TokenEvent([pieces[i % len(pieces)]], "length" if i == n - 1 else None,
                             tokens=1)

    def prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob]:
        return []

    def kv_cache_usage(self) -> float:
        return 0.0

    def close(self) -> None:
        pass


class InstantBackend(_TokenizedBackend):
    """Fixed tokens, produced instantly: measures everything but the model."""

    def __init__(self, model_dir: Path, model_id: str) -> None:
        self.model_id = model_id
        self.max_context = 1 << 20
        self.tokenizer = _Tokenizer(model_dir)
        ids = self.tokenizer.encode(INSTANT_TEXT)
        self._pieces = [self.tokenizer.decode([i]) for i in ids]

    async def generate(
        self, request_id: str, prompt_ids: list[int], params: SamplingParams,
        adapter: str | None = None,
    ) -> AsyncGenerator[TokenEvent, None]:
        n, pieces = params.max_new_tokens, self._pieces
        yield TokenEvent([pieces[i % len(pieces)] for i in range(n)], "length", tokens=n)

    def prompt_logprobs(self, ids: list[int], top: int) -> list[TokenLogprob]:
        return []  # no model, no probabilities (its tokens carry none either)

    def kv_cache_usage(self) -> float:
        return 0.0

    def close(self) -> None:
        pass
