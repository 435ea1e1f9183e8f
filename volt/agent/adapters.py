"""Tuned models on this node: LoRA adapters loaded into the engine on first use.

A request for ``ft:<base>:...`` (a job's model, or one of its checkpoints:
``...:ckpt-step-<n>``) goes to the engine of ``<base>``. The first one here
fetches the adapter from the metro's blob store (sealed; opened with
the fine-tuning data key), unpacks it into a private folder, and asks the
engine to load it (vLLM's runtime LoRA API, which the CPU engine speaks too);
later requests find it loaded. Heartbeats list what is loaded, so placement
sends a tuned model's requests where its adapter already is. An engine keeps
at most ``max_loaded`` adapters: loading one more unloads the least recently
used one that no request is using (none idle: it goes over, for a while). An
engine that restarts forgets its adapters; so does this cache when the engine
stops being ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from volt.agent.engine.client import EngineClient, EngineRejected
from volt.agent.training import unpack
from volt.finetune.blobs import (
    BlobError,
    Blobs,
    BlobUnavailable,
    adapter_blob,
    checkpoint_blob,
)
from volt.finetune.model_ids import TunedModel

log = logging.getLogger(__name__)


class AdapterUnavailable(Exception):
    """The tuned model cannot be served here: ``status`` and ``code`` for the client."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class Adapters:
    def __init__(self, *, metro: str, folder: Path, blobs: Callable[[], Blobs | None],
                 max_loaded: int = 32) -> None:
        self.metro = metro
        self.folder = folder
        self.blobs = blobs
        self.max_loaded = max_loaded
        self._loaded: dict[str, OrderedDict[str, None]] = {}
        """Base model -> the tuned models its engine has loaded, least recently used first."""
        self._using: dict[str, int] = {}
        """Tuned model -> requests using it now (never unloaded under them)."""
        self._locks: dict[str, asyncio.Lock] = {}

    def names(self) -> list[str]:
        return sorted(name for names in self._loaded.values() for name in names)

    def engine_down(self, base: str) -> None:
        """The engine of ``base`` is not ready: whatever it had loaded is gone."""
        self._loaded.pop(base, None)

    def release(self, tuned: TunedModel) -> None:
        """A request that ``ensure`` let through has ended."""
        left = self._using.get(tuned.id, 1) - 1
        if left > 0:
            self._using[tuned.id] = left
        else:
            self._using.pop(tuned.id, None)

    async def ensure(self, client: EngineClient, tuned: TunedModel) -> None:
        """Have the engine serve ``tuned`` (loading it if need be) for one request;
        ``release`` when that request ends."""
        await self._load(client, tuned)
        self._using[tuned.id] = self._using.get(tuned.id, 0) + 1
        self._loaded.setdefault(tuned.base, OrderedDict()).move_to_end(tuned.id)

    async def _load(self, client: EngineClient, tuned: TunedModel) -> None:
        loaded = self._loaded.setdefault(tuned.base, OrderedDict())
        if tuned.id in loaded:
            return
        lock = self._locks.setdefault(tuned.id, asyncio.Lock())
        async with lock:
            if tuned.id in loaded:
                return
            await self._make_room(client, loaded)
            folder = self.folder / (tuned.job_id if tuned.step is None
                                    else f"{tuned.job_id}-step-{tuned.step}")
            if not (folder / "adapter_config.json").is_file():
                blobs = self.blobs()
                if blobs is None:
                    raise AdapterUnavailable("the node cannot reach its blob store", 503,
                                             "engine_unavailable")
                try:
                    data = await blobs.get(self.metro, adapter_blob(tuned.job_id)
                                           if tuned.step is None
                                           else checkpoint_blob(tuned.job_id, tuned.step))
                except BlobError:
                    raise AdapterUnavailable(f"The model `{tuned.id}` does not exist.", 404,
                                             "model_not_found") from None
                except BlobUnavailable:
                    raise AdapterUnavailable("the node's blob store did not answer", 503,
                                             "engine_unavailable") from None
                await asyncio.to_thread(unpack, data, folder)
            try:
                await client.load_adapter(tuned.id, folder)
            except EngineRejected as exc:
                if "already" not in exc.message:  # vLLM: "... has already been loaded"
                    raise AdapterUnavailable(f"The engine cannot serve `{tuned.id}`: "
                                             f"{exc.message}", 400, "unsupported_model") from None
            loaded[tuned.id] = None
            log.info("adapter loaded", extra={"job_id": tuned.job_id, "loaded": len(loaded)})

    async def _make_room(self, client: EngineClient, loaded: OrderedDict[str, None]) -> None:
        while len(loaded) >= self.max_loaded:
            idle = next((name for name in loaded if not self._using.get(name)), None)
            if idle is None:
                return  # every one is serving a request: go over for now
            del loaded[idle]
            try:
                await client.unload_adapter(idle)
            except EngineRejected:
                pass  # already gone (the engine restarted)
            log.info("adapter unloaded (least recently used)")
