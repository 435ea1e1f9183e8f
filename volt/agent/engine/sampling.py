"""Per-request sampling inside transformers' continuous batching.

transformers' batching samples the whole batch with one ``torch.multinomial``
on the global RNG, so a request cannot have its own seed, penalties or
top-logprobs. ``VoltSampler`` is a per-request logits processor that does the
sampling itself for each row (penalties, temperature with 0 meaning greedy,
top-p, a ``torch.Generator`` per request, seeded when the request gives a
seed) and hands the batch back a one-hot row, so the manager's own argmax
(``do_sample=False``) simply takes the chosen token. Log-probabilities of the
chosen and top tokens are kept on the side for the backend to pick up.

This reaches into transformers' continuous-batching internals (the processor
list and its tensor arguments); ``tests/agent/test_sampling.py`` holds it to
its promises.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers.generation.continuous_batching.cb_logits_processors import (
    ContinuousBatchingLogitsProcessor,
    ContinuousBatchingLogitsProcessorList,
)
from transformers.generation.logits_process import LogitsProcessorList

KWARG = "volt_sampling"


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_new_tokens: int
    temperature: float | None = None
    """None: 1.0. 0: greedy."""
    top_p: float | None = None
    seed: int | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_logprobs: int | None = None
    """None: no log-probabilities; 0: the chosen token's only; k: and the k likeliest."""
    stop: tuple[str, ...] = ()
    """Strings that end the completion (handled by the backend, on text)."""


@dataclass(frozen=True, slots=True)
class TokenLogprob:
    token_id: int
    logprob: float | None
    """None only for a prompt's first token, which nothing came before."""
    top: list[tuple[int, float]] | None


@dataclass(slots=True)
class _RequestSampler:
    params: SamplingParams
    generator: torch.Generator
    logprobs: deque[TokenLogprob] = field(default_factory=deque)

    def choose(self, logits: torch.Tensor, generated: list[int]) -> int:
        p = self.params
        if (p.presence_penalty or p.frequency_penalty) and generated:
            counts = torch.bincount(torch.tensor(generated), minlength=logits.numel())
            counts = counts[: logits.numel()].to(logits.dtype)
            logits = logits - p.frequency_penalty * counts - p.presence_penalty * (counts > 0)
        temperature = 1.0 if p.temperature is None else p.temperature
        if temperature == 0:
            token = int(torch.argmax(logits))
            distribution = torch.log_softmax(logits, dim=-1)
        else:
            scaled = logits / temperature
            distribution = torch.log_softmax(scaled, dim=-1)
            probs = distribution.exp()
            if p.top_p is not None and p.top_p < 1.0:
                ordered, order = torch.sort(probs, descending=True)
                outside = torch.cumsum(ordered, dim=-1) - ordered > p.top_p  # keeps the first
                probs = probs.scatter(0, order, ordered.masked_fill(outside, 0.0))
            token = int(torch.multinomial(probs, 1, generator=self.generator))
        if p.top_logprobs is not None:
            top: list[tuple[int, float]] = []
            if p.top_logprobs:
                values, ids = torch.topk(distribution, p.top_logprobs)
                top = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
            self.logprobs.append(TokenLogprob(token, float(distribution[token]), top))
        return token


class VoltSampler(ContinuousBatchingLogitsProcessor):
    supported_kwargs: dict[str, type] = {KWARG: object}
    ignored_kwargs: tuple[str, ...] = ()

    def __init__(self) -> None:
        self._requests: dict[str, _RequestSampler] = {}
        self._rows: list[tuple[str, list[int]]] = []
        self._lock = threading.Lock()

    # called on the event loop

    def register(self, request_id: str, params: SamplingParams) -> None:
        generator = torch.Generator()
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        with self._lock:
            self._requests[request_id] = _RequestSampler(params, generator)

    def forget(self, request_id: str) -> None:
        with self._lock:
            self._requests.pop(request_id, None)

    def take_logprobs(self, request_id: str, count: int) -> list[TokenLogprob]:
        """The log-probabilities of the next ``count`` tokens of a request."""
        with self._lock:
            sampler = self._requests.get(request_id)
        if sampler is None:
            return []
        return [sampler.logprobs.popleft() for _ in range(min(count, len(sampler.logprobs)))]

    # called on the batching thread

    def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
        int32_tensor.fill_(0)

    def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
        self._rows = [(r.state.request_id, r.state.generated_tokens)
                      for r in requests_with_new_token]
        return torch.zeros(len(self._rows), dtype=torch.int32)

    def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
        chosen = torch.full_like(scores, float("-inf"))
        with self._lock:
            samplers = [self._requests.get(request_id) for request_id, _ in self._rows]
        for row, (sampler, (_, generated)) in enumerate(zip(samplers, self._rows, strict=False)):
            if row >= scores.size(0):
                break
            logits = scores[row]
            token = sampler.choose(logits, generated) if sampler else int(torch.argmax(logits))
            chosen[row, token] = 0.0
        return chosen


def install(manager: Any) -> VoltSampler:
    """Make ``VoltSampler`` the manager's only logits processor (before ``start()``)."""
    sampler = VoltSampler()
    processors = ContinuousBatchingLogitsProcessorList(
        LogitsProcessorList([sampler]), per_request_processors=False,
        drop_unsupported_processors=False,
    )
    processors.tensors_required = 1  # one argument row (ours), counted by hand for a custom one
    manager.logit_processor = processors
    return sampler
