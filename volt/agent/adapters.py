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

A deleted model (``AdapterDrop`` from the scheduler) loses its files here at
once and is unloaded as soon as no request uses it. The folder is a cache:
an agent starts with it empty, so a node that was away when a model was
deleted keeps nothing of it either.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from volt.agent.engine.client import EngineClient, EngineRejected
from volt.agent.training import unpack
from volt.finetune.blobs import BlobError, Blobs, BlobUnavailable, model_blob
from volt.finetune.model_ids import TunedModel, parse

log = logging.getLogger(__name__)


class AdapterUnavailable(Exception):
    """The tuned model cannot be served here: ``status`` and ``code`` for the client."""

    def __init__(self, message: str, status: int, code: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def _gone(tuned: TunedModel) -> AdapterUnavailable:
    """The model is not there (deleted, or never made): the client's 404."""
    return AdapterUnavailable(f"The model `{tuned.id}` does not exist.", 404, "model_not_found")


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
        self._dropped: set[str] = set()
        """Deleted tuned models: never loaded here again."""
        self._unload_when_idle: dict[str, EngineClient] = {}
        """Deleted tuned models still serving a request: unloaded when it ends."""
        self._unloading: set[asyncio.Task[None]] = set()
        shutil.rmtree(folder, ignore_errors=True)  # the cache of an earlier run
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)

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
            return
        self._using.pop(tuned.id, None)
        client = self._unload_when_idle.pop(tuned.id, None)
        if client is not None:
            task = asyncio.get_running_loop().create_task(self._unload(client, tuned.id))
            self._unloading.add(task)
            task.add_done_callback(self._unloading.discard)

    async def drop(self, model_ids: list[str],
                   client_of: Callable[[str], EngineClient | None]) -> None:
        """Deleted tuned models: their files go now, their weights leave the
        engine once no request uses them (``client_of``: a base model's engine)."""
        for model_id in model_ids:
            tuned = parse(model_id)
            if tuned is None:
                continue
            self._dropped.add(model_id)
            await asyncio.to_thread(shutil.rmtree, self._folder(tuned), True)
            loaded = self._loaded.get(tuned.base)
            if loaded is None or model_id not in loaded:
                continue
            del loaded[model_id]
            client = client_of(tuned.base)
            if client is None:
                continue
            if self._using.get(model_id):
                self._unload_when_idle[model_id] = client
            else:
                await self._unload(client, model_id)
            log.info("adapter dropped (its model was deleted)", extra={"job_id": tuned.job_id})

    def _folder(self, tuned: TunedModel) -> Path:
        return self.folder / (tuned.job_id if tuned.step is None
                              else f"{tuned.job_id}-step-{tuned.step}")

    @staticmethod
    async def _unload(client: EngineClient, model_id: str) -> None:
        try:
            await client.unload_adapter(model_id)
        except EngineRejected:
            pass  # already gone (the engine restarted)

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
        if tuned.id in self._dropped:
            raise _gone(tuned)
        lock = self._locks.setdefault(tuned.id, asyncio.Lock())
        async with lock:
            if tuned.id in loaded:
                return
            await self._make_room(client, loaded)
            folder = self._folder(tuned)
            if not (folder / "adapter_config.json").is_file():
                blobs = self.blobs()
                if blobs is None:
                    raise AdapterUnavailable("the node cannot reach its blob store", 503,
                                             "engine_unavailable")
                try:
                    data = await blobs.get(self.metro, model_blob(tuned))
                except BlobError:
                    raise _gone(tuned) from None
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
            if tuned.id in self._dropped:  # deleted while it was loading
                await self._unload(client, tuned.id)
                await asyncio.to_thread(shutil.rmtree, folder, True)
                raise _gone(tuned)
            loaded[tuned.id] = None
            log.info("adapter loaded", extra={"job_id": tuned.job_id, "loaded": len(loaded)})

    async def _make_room(self, client: EngineClient, loaded: OrderedDict[str, None]) -> None:
        while len(loaded) >= self.max_loaded:
            idle = next((name for name in loaded if not self._using.get(name)), None)
            if idle is None:
                return  # every one is serving a request: go over for now
            del loaded[idle]
            await self._unload(client, idle)
            log.info("adapter unloaded (least recently used)")
