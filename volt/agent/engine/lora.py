"""LoRA adapters served beside the base model, many per engine (vLLM's
``--enable-lora`` with runtime loading, on the CPU engine).

transformers' continuous batching runs one set of weights, so tuned models
do not go through it. One peft ``PeftModel`` wraps a second copy of the base
model with every loaded adapter; a decoding thread steps the active requests
together — one token per request per round, in one forward pass, each row
through the adapter it names (peft's mixed adapter batches) — so many streams
of many adapters progress together. The rows share one KV cache
(``_RowCache``): a request joining is prefilled once and its cache merged in
(left-padded, masked), one leaving is cut out, and every other round feeds
each row only its newest token. Each LoRA projection runs the whole batch in
two gathered matmuls, however many adapters it holds (``_GatheredLora``).
Adapters load and unload at run time (``POST /v1/load_lora_adapter``, as
vLLM's API); loading one already loaded under the same name is a no-op.

Sampling is the base model's (``sampling._RequestSampler``): same seed, same
penalties, same logprobs. The thread hands raw token ids to the event loop;
the backend turns them into text exactly as for the base model.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from volt.agent.engine.sampling import SamplingParams, TokenLogprob, _RequestSampler

log = logging.getLogger(__name__)
MAX_BATCH = 32
"""Requests stepped together in one round (more wait for the next round)."""


class AdapterError(Exception):
    """An adapter that cannot be loaded (no such folder, not a LoRA of this model)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What one round produced for a request: its new tokens, whether it ended."""

    tokens: list[int]
    finished: bool
    logprobs: list[TokenLogprob] = field(default_factory=list)
    error: str | None = None


@dataclass(slots=True)
class _Active:
    request_id: str
    adapter: str
    prompt: list[int]
    sampler: _RequestSampler
    max_new_tokens: int
    deliver: Callable[[Step], None]
    generated: list[int] = field(default_factory=list)
    cancelled: bool = False


class _GatheredLora:
    """Every LoRA projection of the model, for a batch of rows each through its
    own adapter, in two batched matmuls (what punica's gather kernels do on
    GPUs) instead of peft's loop over the distinct adapters in the batch —
    which costs a pair of small matmuls per adapter per projection, most of
    a round once a batch holds many adapters.

    Per projection, the loaded adapters' ``A`` and scaled ``B`` are stacked
    (ranks padded with zeros to the largest); a round gathers each row's pair
    by index. Built lazily, rebuilt after a load or unload.
    """

    def __init__(self) -> None:
        self._modules: list[Any] = []
        self._stacks: dict[int, tuple[Any, Any]] = {}
        self._index: dict[str, int] = {}
        self._rows: tuple[tuple[str, ...], Any] | None = None

    def install(self, model: Any) -> None:
        """Take over the mixed-batch forward of every plain LoRA linear layer."""
        from peft.tuners.lora.layer import Linear

        for module in model.modules():
            if type(module) is Linear and not module.lora_variant:
                module._mixed_batch_forward = self._forward_of(module)  # type: ignore[method-assign]
                self._modules.append(module)

    def invalidate(self) -> None:
        """The adapters changed: stacks and indexes are built again on next use."""
        self._stacks.clear()
        self._index.clear()
        self._rows = None

    def _forward_of(self, module: Any) -> Callable[..., Any]:
        def forward(x: Any, *args: Any, adapter_names: list[str], **kwargs: Any) -> Any:
            import torch

            kwargs.pop("alora_offsets", None)  # a variant's (none here)
            result = module.base_layer(x, *args, **kwargs)
            a, b = self._stack(module)
            rows = self._row_index(adapter_names)
            hidden = torch.bmm(x.to(a.dtype), a[rows].transpose(1, 2))
            return result + torch.bmm(hidden, b[rows].transpose(1, 2)).to(result.dtype)

        return forward

    def _stack(self, module: Any) -> tuple[Any, Any]:
        """The module's adapters' ``A`` [adapters, rank, in] and scaled ``B``
        [adapters, out, rank]; zeros for an adapter that leaves it alone."""
        import torch

        stack = self._stacks.get(id(module))
        if stack is None:
            index = self._adapters()
            names = list(module.lora_A)
            rank = max((module.lora_A[n].weight.shape[0] for n in names), default=1)
            a = torch.zeros((len(index), rank, module.in_features))
            b = torch.zeros((len(index), module.out_features, rank))
            for name in names:
                i, r = index[name], module.lora_A[name].weight.shape[0]
                a[i, :r] = module.lora_A[name].weight.detach()
                b[i, :, :r] = module.lora_B[name].weight.detach() * module.scaling[name]
            stack = self._stacks[id(module)] = (a, b)
        return stack

    def _adapters(self) -> dict[str, int]:
        """Every loaded adapter, numbered (the rows of every module's stack)."""
        if not self._index:
            names = sorted({n for module in self._modules for n in module.lora_A})
            self._index = {name: i for i, name in enumerate(names)}
        return self._index

    def _row_index(self, adapter_names: list[str]) -> Any:
        """Each row's adapter as an index into the stacks (the same for every
        projection of a round: worked out once)."""
        import torch

        names = tuple(adapter_names)
        if self._rows is None or self._rows[0] != names:
            index = self._adapters()
            self._rows = (names, torch.tensor([index[n] for n in names]))
        return self._rows[1]


class LoraAdapters:
    def __init__(self, model_dir: Path, eos_id: int) -> None:
        self.model_dir = model_dir
        self.eos_id = eos_id
        self._model: Any = None
        self._keys: dict[str, str] = {}
        """lora_name -> peft's adapter name (peft names may not hold ``:``)."""
        self._serial = 0
        self._lock = threading.Lock()
        """Held by the decoding thread for each round, and by load/unload."""
        self._active: list[_Active] = []
        self._rows = _RowCache()
        self._gathered = _GatheredLora()
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def names(self) -> list[str]:
        return list(self._keys)

    # -- loading (blocking: call in a thread) ---------------------------------------

    def load(self, name: str, path: Path) -> bool:
        """Load ``path`` as ``name``; False if it was loaded already."""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        if name in self._keys:
            return False
        if not (path / "adapter_config.json").is_file():
            raise AdapterError(f"{path} holds no LoRA adapter (adapter_config.json)")
        with self._lock:
            self._serial += 1
            key = f"a{self._serial}"
            try:
                if self._model is None:
                    base = AutoModelForCausalLM.from_pretrained(self.model_dir,
                                                                dtype=torch.float32)
                    self._model = PeftModel.from_pretrained(base, str(path),
                                                            adapter_name=key).eval()
                    self._gathered.install(self._model)
                else:
                    self._model.load_adapter(str(path), adapter_name=key)
                self._gathered.invalidate()
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise AdapterError(f"the adapter does not load: {type(exc).__name__}") \
                    from exc
            self._keys[name] = key
        log.info("adapter loaded", extra={"adapters": len(self._keys)})
        return True

    def unload(self, name: str) -> bool:
        with self._lock:
            key = self._keys.pop(name, None)
            if key is None:
                return False
            for active in self._active:
                if active.adapter == key:
                    active.cancelled = True
            self._model.delete_adapter(key)
            self._gathered.invalidate()
        return True

    # -- generating -----------------------------------------------------------------

    def start(self, request_id: str, name: str, prompt: list[int], params: SamplingParams,
              deliver: Callable[[Step], None]) -> _Active:
        """Begin generating; ``deliver`` is called (on the decoding thread) per round."""
        import torch

        key = self._keys.get(name)
        if key is None:
            raise AdapterError(f"adapter {name} is not loaded")
        generator = torch.Generator()
        if params.seed is not None:
            generator.manual_seed(params.seed)
        else:
            generator.seed()
        active = _Active(request_id, key, prompt, _RequestSampler(params, generator),
                         params.max_new_tokens, deliver)
        with self._wake:
            self._active.append(active)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="lora-decode",
                                                daemon=True)
                self._thread.start()
            self._wake.notify()
        return active

    def cancel(self, active: _Active) -> None:
        active.cancelled = True

    def close(self) -> None:
        with self._wake:
            self._closed = True
            self._wake.notify()

    def _run(self) -> None:
        import torch

        while True:
            with self._wake:
                while not self._active and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                batch = [a for a in self._active if not a.cancelled][:MAX_BATCH]
                for active in [a for a in self._active if a.cancelled]:
                    self._active.remove(active)
            if not batch:
                continue
            with self._lock, torch.no_grad():
                try:
                    steps = self._step(batch)
                except Exception as exc:  # a failing round must not stop the thread
                    log.exception("adapter generation failed")
                    steps = [Step([], True, error=type(exc).__name__) for _ in batch]
                    self._rows = _RowCache()  # its rows all end: start the cache afresh
            for active, step in zip(batch, steps, strict=True):
                active.deliver(step)
                if step.finished:
                    self._drop(active)

    def _drop(self, active: _Active) -> None:
        with self._wake:
            if active in self._active:
                self._active.remove(active)

    def _step(self, batch: list[_Active]) -> list[Step]:
        """One token for every request of the round: the rows already in the
        cache advance by their newest token; those joining are prefilled."""
        rows = self._rows
        in_batch = {id(a) for a in batch}
        rows.keep([a for a in rows.rows if id(a) in in_batch])
        cached = {id(a) for a in rows.rows}
        joining = [a for a in batch if id(a) not in cached]
        logits: dict[int, Any] = {}
        if rows.rows:
            logits.update(zip(map(id, rows.rows), rows.advance(self._model), strict=True))
        if joining:
            logits.update(zip(map(id, joining), rows.join(self._model, joining), strict=True))
        steps = []
        for active in batch:
            token = active.sampler.choose(logits[id(active)].float(), active.generated)
            active.generated.append(token)
            logprobs = []
            if active.sampler.params.top_logprobs is not None and active.sampler.logprobs:
                logprobs = [active.sampler.logprobs.popleft()]
            finished = token == self.eos_id or len(active.generated) >= active.max_new_tokens
            steps.append(Step([token], finished, logprobs))
        return steps


class _RowCache:
    """The rows being decoded together and their one KV cache.

    Every row's cache holds its sequence but its newest token; rows are
    left-padded to the longest, the padding masked out, and each row's
    positions are its own (``positions``: the next token's). Runs on the
    decoding thread only.
    """

    def __init__(self) -> None:
        self.rows: list[_Active] = []
        self._cache: Any = None
        self._mask: Any = None
        self._positions: Any = None

    def keep(self, rows: list[_Active]) -> None:
        """Only these rows (a subset, in order) go on; the rest leave the cache."""
        import torch

        if len(rows) == len(self.rows):
            return
        if not rows:
            self.rows, self._cache, self._mask, self._positions = [], None, None, None
            return
        index = {id(a): i for i, a in enumerate(self.rows)}
        kept = torch.tensor([index[id(a)] for a in rows])
        self._cache.batch_select_indices(kept)
        self._mask, self._positions = self._mask[kept], self._positions[kept]
        self.rows = rows
        # The columns only the leavers used are padding for everyone now.
        first = int(self._mask.any(0).nonzero()[0])
        if first:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, first:], layer.values[:, :, first:]
            self._mask = self._mask[:, first:]

    def advance(self, model: Any) -> list[Any]:
        """Feed each row its newest token; the next-token logits per row."""
        import torch

        newest = torch.tensor([[a.generated[-1]] for a in self.rows])
        mask = torch.cat([self._mask, torch.ones((len(self.rows), 1), dtype=torch.long)], 1)
        output = model(input_ids=newest, attention_mask=mask,
                       position_ids=self._positions[:, None], cache=self._cache,
                       adapter_names=[a.adapter for a in self.rows], use_cache=True)
        self._cache, self._mask = output.cache, mask
        self._positions = self._positions + 1
        return list(output.logits[:, -1])

    def join(self, model: Any, joining: list[_Active]) -> list[Any]:
        """Prefill the joining rows (their whole sequence) and merge their cache
        into the rows'; their next-token logits."""
        import torch

        sequences = [a.prompt + a.generated for a in joining]
        width = max(len(s) for s in sequences)
        ids = torch.zeros((len(joining), width), dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            ids[row, width - len(sequence):] = torch.tensor(sequence)
            mask[row, width - len(sequence):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        output = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                       adapter_names=[a.adapter for a in joining], use_cache=True,
                       logits_to_keep=1)  # only the next token's
        cache, next_positions = output.cache, mask.sum(-1)
        if not self.rows:
            self._cache, self._mask, self._positions = cache, mask, next_positions
        else:
            total = max(self._mask.shape[1], width)
            for mine, theirs in zip(self._cache.layers, cache.layers, strict=True):
                mine.keys = torch.cat([_left_pad(mine.keys, total),
                                       _left_pad(theirs.keys, total)], 0)
                mine.values = torch.cat([_left_pad(mine.values, total),
                                         _left_pad(theirs.values, total)], 0)
            self._mask = torch.cat([_left_pad(self._mask, total), _left_pad(mask, total)], 0)
            self._positions = torch.cat([self._positions, next_positions])
        self.rows = [*self.rows, *joining]
        return list(output.logits[:, -1])


def _left_pad(tensor: Any, width: int) -> Any:
    """Zeros before the sequence axis (the cache's -2, a mask's -1) up to ``width``."""
    import torch.nn.functional as F

    axis = -2 if tensor.dim() == 4 else -1
    missing = width - tensor.shape[axis]
    if not missing:
        return tensor
    return F.pad(tensor, (0, 0, missing, 0) if axis == -2 else (missing, 0))


def deliver_to(loop: asyncio.AbstractEventLoop, queue: asyncio.Queue[Step]
               ) -> Callable[[Step], None]:
    """A ``deliver`` that hands each round to ``queue`` on the event loop."""
    def deliver(step: Step) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, step)

    return deliver
