"""The node agent: one per host, dialling out to NATS (it opens no port).

It announces itself, heartbeats its engines' load and its GPUs, and serves
inference requests addressed to its node by calling the engine that serves the
request's model (one engine per model, as vLLM serves one model per process)
and streaming the result to the requester's reply subject. A requester's ``Cancel`` stops
the engine within milliseconds: the request's task is cancelled, which closes
the HTTP connection to the engine, which cancels generation there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from prometheus_client import Counter

from volt.agent.adapters import Adapters, AdapterUnavailable
from volt.agent.attestation import AttestationClient
from volt.agent.engine.client import (
    EngineChunk,
    EngineClient,
    EngineError,
    EngineRejected,
    EngineUnavailable,
)
from volt.agent.outbox import ReplyOutbox, Route
from volt.agent.seal import Seal, SealCheck
from volt.agent.telemetry import GpuCollector, GpuTelemetry
from volt.agent.training import Training
from volt.agent.usage import UsagePublisher
from volt.finetune import model_ids
from volt.wire import (
    INFERENCE,
    SCHEDULER,
    AdapterDrop,
    AgentTiming,
    Cancel,
    ChoiceDelta,
    EmbeddingChunk,
    EngineLoad,
    Final,
    Heartbeat,
    InferenceError,
    InferenceRequest,
    NodeAssignment,
    NodeGoodbye,
    NodeHello,
    StreamChunk,
    TrainCancel,
    TrainStart,
    Usage,
    UsageRecord,
    encode,
    subjects,
)

log = logging.getLogger(__name__)
REFUSED_REPLY_SUBJECTS = Counter(
    "volt_agent_refused_reply_subjects_total",
    "Requests dropped because their reply subject was not one of this metro's")

_ENDPOINT_PATHS = {
    "chat.completions": "/v1/chat/completions",
    "completions": "/v1/completions",
    "embeddings": "/v1/embeddings",
}
EMBEDDINGS_PER_MESSAGE = 256
CLEAN_GPU_MEMORY_MIB = 1024
"""A GPU using no more than this is free (the driver's own context stays)."""
GPU_MEMORY_POLL_S = 2.0
"""384 float32s each: 384 KiB per message, well under NATS's 1 MiB default."""


@dataclass(frozen=True, slots=True)
class EngineHandle:
    """One engine child: the model it serves, how to reach it, whether it is up."""

    model: str
    client: EngineClient
    ready: asyncio.Event
    seal: Callable[[], SealCheck] = lambda: SealCheck(True)
    """The engine's seal now (its supervisor's ``seal_check``)."""
    pause: Callable[[], None] = lambda: None
    """Stop the engine and keep it stopped (the node's GPUs go to a Forge lease)."""
    resume: Callable[[], None] = lambda: None
    stopped: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once a paused engine is gone."""


@dataclass(slots=True)
class _Progress:
    """What a request has done so far: decides whether a failure is retryable,
    and is what its usage record reports however the request ends."""

    tokens_sent: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0


class Agent:
    def __init__(
        self,
        *,
        node_id: str,
        metro: str,
        tier: str,
        engines: list[EngineHandle],
        telemetry: GpuTelemetry,
        heartbeat_interval_s: float = 2.0,
        max_inflight: int = 512,
        engine_kind: str = "cpu",
        usage: UsagePublisher | None = None,
        capacity: str = "live",
        rack: str = "",
        nvlink_domain: str = "",
        gpu_interval_s: float = 5.0,
        insecure: bool = False,
        attestation: AttestationClient | None = None,
        stream_interval_s: float = 0.0,
        training: Training | None = None,
        adapters: Adapters | None = None,
    ) -> None:
        self.node_id = subjects.token(node_id)
        self.training = training
        """Runs fine-tune jobs the scheduler sends (None: this node trains nothing)."""
        self.adapters = adapters
        """Loads tuned models into the engines (None: this node serves none)."""
        self.stream_interval_s = stream_interval_s
        """Replies to one API replica within this long ride in one bus message."""
        self.outbox: ReplyOutbox | None = None
        self.metro = subjects.token(metro)
        self.tier = tier
        self.capacity = capacity
        self.rack, self.nvlink_domain = rack, nvlink_domain
        self.insecure = insecure
        self.attestation = attestation
        """Proves this node's boot to the scheduler (None: no TPM; ``not_attested``)."""
        """Engines run unsealed: the explicit development flag."""
        self.engines = {handle.model: handle for handle in engines}
        self.gpus = GpuCollector(telemetry, interval_s=gpu_interval_s)
        self.heartbeat_interval_s = heartbeat_interval_s
        self.max_inflight = max_inflight
        self.engine_kind = engine_kind
        self.usage = usage or UsagePublisher(metro)
        self._inflight: dict[str, asyncio.Task[None]] = {}
        self._by_replica: dict[str, int] = {}
        self._nc: Client | None = None
        self._load = EngineLoad()
        self._seq = 0
        self.lease_id = ""
        """The Forge lease this node's GPUs are handed to (reported in heartbeats)."""
        self._assigned = ""
        self._handover: asyncio.Task[None] | None = None

    # -- lifecycle -------------------------------------------------------------

    async def run(self, nc: Client) -> None:
        """Serve until cancelled, then say goodbye so placement drops us at once."""
        self._nc = nc
        self.outbox = ReplyOutbox(nc.publish, self.stream_interval_s)
        await nc.subscribe(
            subjects.infer(self.metro, self.node_id), cb=self._on_request,
            pending_msgs_limit=65536,
        )
        await nc.subscribe(subjects.cancel(self.metro, self.node_id), cb=self._on_cancel)
        await nc.subscribe(subjects.assignment(self.node_id), cb=self._on_assignment)
        await nc.subscribe(subjects.train(self.node_id), cb=self._on_train)
        await self.gpus.refresh()
        await self._publish_hello()
        publisher = asyncio.create_task(self.usage.run(nc))
        background = [asyncio.create_task(self.gpus.run())]
        if self.attestation is not None:
            background.append(asyncio.create_task(self.attestation.run(nc)))
        try:
            await self._heartbeat_forever()
        finally:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            # Requests still running end as cancelled and record their usage;
            # then the publisher drains its queue to JetStream.
            if self.training is not None:
                await self.training.stop()
            inflight = list(self._inflight.values())
            for task in inflight:
                task.cancel()
            await asyncio.gather(*inflight, return_exceptions=True)
            await self.outbox.flush_all()
            publisher.cancel()
            await asyncio.gather(publisher, return_exceptions=True)
            with contextlib.suppress(Exception):
                await nc.publish(subjects.node_event(self.node_id, "goodbye"),
                                 encode(NodeGoodbye(node_id=self.node_id)))
                await nc.flush(timeout=1)

    async def _publish_hello(self) -> None:
        assert self._nc is not None
        hello = NodeHello(
            node_id=self.node_id, metro=self.metro, tier=self.tier, models=list(self.engines),
            gpus=self.gpus.latest, engine=self.engine_kind,
            heartbeat_interval_s=self.heartbeat_interval_s, capacity=self.capacity,
            rack=self.rack, nvlink_domain=self.nvlink_domain,
        )
        await self._nc.publish(subjects.node_event(self.node_id, "hello"), encode(hello))

    @property
    def _seal_word(self) -> str:
        # What responses say: the flag, not a per-request /proc read (the
        # heartbeat checks the kernel's view; an unsealed node is drained).
        return Seal.INSECURE.value if self.insecure else Seal.SEALED.value

    @property
    def _attestation_word(self) -> str:
        attested = self.attestation is not None and self.attestation.attested
        return "attested" if attested else "not_attested"

    def ready_models(self) -> list[str]:
        return [model for model, handle in self.engines.items() if handle.ready.is_set()]

    def seal(self) -> tuple[Seal, str]:
        """This node's seal, checked now: (state, what is wrong)."""
        if self.insecure:
            return Seal.INSECURE, "started with the insecure development flag"
        for model, handle in self.engines.items():
            check = handle.seal()
            if not check.sealed:
                return Seal.BROKEN, f"{model}: {check.reason}"
        return Seal.SEALED, ""

    def heartbeat(self) -> Heartbeat:
        # Only the models whose engine is up: placement skips the others here.
        self._seq += 1
        models = self.ready_models()
        seal, problem = self.seal()
        return Heartbeat(
            seal=seal.value, seal_problem=problem,
            node_id=self.node_id, metro=self.metro, tier=self.tier, models=models,
            gpus=self.gpus.latest, load=self._load, engine_ready=bool(models),
            heartbeat_interval_s=self.heartbeat_interval_s, seq=self._seq,
            inflight_by_replica=dict(self._by_replica), capacity=self.capacity,
            rack=self.rack, nvlink_domain=self.nvlink_domain, lease_id=self.lease_id,
            training=self.training.statuses() if self.training is not None else [],
            adapters=self.adapters.names() if self.adapters is not None else [],
            trains=self.training.models() if self.training is not None else [],
        )

    # -- fine-tuning --------------------------------------------------------------

    async def _on_train(self, msg: Msg) -> None:
        message = SCHEDULER.decode_or_drop(msg.data)
        if (isinstance(message, TrainStart | TrainCancel) and message.node_id == self.node_id
                and self.training is not None):
            self.training.command(message)
        elif (isinstance(message, AdapterDrop) and message.node_id == self.node_id
                and self.adapters is not None):
            await self.adapters.drop(message.models, self._client_of)

    def _client_of(self, model: str) -> EngineClient | None:
        handle = self.engines.get(model)
        return handle.client if handle is not None else None

    def _engine_for(self, model: str) -> tuple[EngineHandle | None, model_ids.TunedModel | None]:
        """The engine serving ``model``; for a tuned model, its base model's."""
        handle = self.engines.get(model)
        if handle is not None or self.adapters is None:
            return handle, None
        tuned = model_ids.parse(model)
        if tuned is None:
            return None, None
        return self.engines.get(tuned.base), tuned

    # -- Forge: handing the GPUs over and taking them back ----------------------

    async def _on_assignment(self, msg: Msg) -> None:
        message = SCHEDULER.decode_or_drop(msg.data)
        if not isinstance(message, NodeAssignment) or message.node_id != self.node_id:
            return
        if message.lease_id == self._assigned:
            return  # repeated until our heartbeat shows it done; already under way
        self._assigned = message.lease_id
        if self._handover is not None:
            self._handover.cancel()
        self._handover = asyncio.create_task(self._hand_over(message.lease_id))

    async def _hand_over(self, lease_id: str) -> None:
        if lease_id:
            # Spark already sends nothing new here (the view marks the node
            # leased) and the scheduler waited for what ran to end; a request
            # still running ends with its engine, and fails over if its
            # client has seen nothing yet.
            for handle in self.engines.values():
                handle.pause()
            await asyncio.gather(*(h.stopped.wait() for h in self.engines.values()))
            self.lease_id = lease_id
            log.info("GPUs handed to a Forge lease", extra={"lease_id": lease_id})
            return
        # The lease's pods are gone; Spark starts again once their GPU memory
        # is released as NVML sees it (a process that outlived its pod would
        # leave it held).
        waited = 0.0
        while busy := [gpu.index for gpu in await self.gpus.refresh()
                       if gpu.memory_used_mib > CLEAN_GPU_MEMORY_MIB]:
            if waited % 60 == 0:
                log.warning("GPU memory still in use after the lease; Spark waits",
                            extra={"gpus": busy, "lease_id": self.lease_id})
            await asyncio.sleep(GPU_MEMORY_POLL_S)
            waited += GPU_MEMORY_POLL_S
        log.info("GPUs back from a Forge lease", extra={"lease_id": self.lease_id})
        self.lease_id = ""
        for handle in self.engines.values():
            handle.resume()

    async def _heartbeat_forever(self) -> None:
        assert self._nc is not None
        while True:
            started = time.monotonic()
            if self.adapters is not None:
                for model, handle in self.engines.items():
                    if not handle.ready.is_set():
                        self.adapters.engine_down(model)
            self._load = await self._read_load()
            # Publishing while NATS is down buffers in the client (bounded);
            # nats-py flushes it after reconnecting.
            with contextlib.suppress(Exception):
                await self._nc.publish(subjects.node_event(self.node_id, "heartbeat"),
                                       encode(self.heartbeat()))
            elapsed = time.monotonic() - started
            await asyncio.sleep(max(0.0, self.heartbeat_interval_s - elapsed))

    async def _read_load(self) -> EngineLoad:
        """The node's load: its engines' requests added up, the fullest KV cache."""
        loads = []
        for handle in self.engines.values():
            if handle.ready.is_set():
                try:
                    loads.append(await handle.client.load(timeout_s=self.heartbeat_interval_s / 2))
                except EngineUnavailable:
                    log.warning("engine load unavailable", extra={"model": handle.model})
        if not loads:
            return self._load
        return EngineLoad(
            running=sum(load.running for load in loads),
            waiting=sum(load.waiting for load in loads),
            kv_cache_usage=max(load.kv_cache_usage for load in loads),
        )

    # -- requests --------------------------------------------------------------

    async def _on_request(self, msg: Msg) -> None:
        request = INFERENCE.decode_or_drop(msg.data)
        if not isinstance(request, InferenceRequest) or not msg.reply:
            return
        # Completions go only to a reply subject of this node's own metro: a
        # request naming any other subject would make the pod send a payload
        # where it must not go (another metro, a global subject).
        target = subjects.parse_reply(msg.reply)
        if target is None or target.metro != self.metro:
            REFUSED_REPLY_SUBJECTS.inc()
            log.warning("request with a foreign reply subject dropped",
                        extra={"request_id": request.request_id})
            return
        route = Route(msg.reply, subjects.batch_reply(target.metro, target.replica_id))
        handle, _ = self._engine_for(request.model)
        ready = handle is not None and handle.ready.is_set()
        if len(self._inflight) >= self.max_inflight or not ready:
            reason = "overloaded" if ready else "engine_unavailable"
            await self._reply(route, InferenceError(
                request_id=request.request_id, code=reason, status=503, retryable=True,
                message="the pod cannot take this request now",
            ))
            return
        replica = target.replica_id  # whose request this is
        self._by_replica[replica] = self._by_replica.get(replica, 0) + 1
        task = asyncio.create_task(self._serve(request, route))
        self._inflight[request.request_id] = task

        def done(_: object) -> None:
            self._inflight.pop(request.request_id, None)
            left = self._by_replica.get(replica, 1) - 1
            if left > 0:
                self._by_replica[replica] = left
            else:
                self._by_replica.pop(replica, None)

        task.add_done_callback(done)

    async def _on_cancel(self, msg: Msg) -> None:
        cancel = INFERENCE.decode_or_drop(msg.data)
        if isinstance(cancel, Cancel) and (task := self._inflight.get(cancel.request_id)):
            task.cancel()

    async def _reply(
        self, route: Route, message: StreamChunk | EmbeddingChunk | Final | InferenceError
    ) -> None:
        assert self.outbox is not None
        await self.outbox.send(route, message)

    async def _serve(self, request: InferenceRequest, reply: Route) -> None:
        received = time.perf_counter()
        started_unix = time.time()
        path = _ENDPOINT_PATHS[request.endpoint]
        progress = _Progress()
        status = "failed"
        tuned: model_ids.TunedModel | None = None
        using = False
        try:
            remaining = request.deadline_unix - time.time()
            if remaining <= 0:
                raise TimeoutError
            handle, tuned = self._engine_for(request.model)
            assert handle is not None
            engine = handle.client
            async with asyncio.timeout(remaining):
                if tuned is not None and self.adapters is not None:
                    await self.adapters.ensure(engine, tuned)
                    using = True
                if request.endpoint == "embeddings":
                    await self._embed(engine, request, reply, received, progress)
                else:
                    await self._relay(engine, request, reply, path, received, progress)
            status = "completed"
        except asyncio.CancelledError:
            status = "cancelled"  # the requester went away: nobody is listening any more
        except TimeoutError:
            await self._reply(reply, InferenceError(
                request_id=request.request_id, code="deadline_exceeded", status=504,
                message="the request ran past its deadline",
            ))
        except AdapterUnavailable as exc:
            await self._reply(reply, InferenceError(
                request_id=request.request_id, code=exc.code, status=exc.status,
                message=str(exc), retryable=exc.status >= 500,
            ))
        except EngineRejected as exc:
            message = exc.message
            if exc.status == 404 and exc.code == "not_found":  # the engine has no such route
                message = (f"The model `{request.model}` does not support {path}; "
                           "GET /v1/models lists the models.")
            await self._reply(reply, InferenceError(
                request_id=request.request_id, code=exc.code, status=exc.status,
                message=message,
            ))
        except EngineError as exc:
            log.warning("engine failed a request", extra={
                "request_id": request.request_id, "error": type(exc).__name__,
            })
            await self._reply(reply, InferenceError(
                request_id=request.request_id, code="engine_error", status=502,
                message="the inference engine failed", retryable=not progress.tokens_sent,
            ))
        finally:
            if using and tuned is not None and self.adapters is not None:
                self.adapters.release(tuned)
            self.usage.record(UsageRecord(
                request_id=request.request_id, tenant_id=request.tenant_id,
                key_id=request.key_id, model=request.model, endpoint=request.endpoint,
                metro=self.metro, tier=self.tier, pod=self.node_id, stream=request.stream,
                status=status, prompt_tokens=progress.prompt_tokens,
                completion_tokens=progress.completion_tokens,
                cached_tokens=progress.cached_tokens,
                started_unix=started_unix, ended_unix=time.time(),
                spiffe_id=request.spiffe_id, livemode=request.livemode,
            ))

    async def _embed(
        self, engine: EngineClient, request: InferenceRequest, reply: Route, received: float,
        progress: _Progress,
    ) -> None:
        """One call, one answer: vectors in parts small enough for NATS, then the end."""
        dispatched = time.perf_counter()
        result = await engine.embed(request.body)
        done = time.perf_counter()
        progress.prompt_tokens = result.prompt_tokens
        vectors = result.vectors
        for seq, start in enumerate(range(0, len(vectors), EMBEDDINGS_PER_MESSAGE)):
            await self._reply(reply, EmbeddingChunk(
                request_id=request.request_id, seq=seq, first_index=start,
                vectors=vectors[start: start + EMBEDDINGS_PER_MESSAGE],
            ))
        await self._reply(reply, Final(
            request_id=request.request_id, pod=self.node_id, metro=self.metro, tier=self.tier,
            seal=self._seal_word, attestation=self._attestation_word,
            usage=Usage(prompt_tokens=result.prompt_tokens),
            timing=AgentTiming(queue_ms=(dispatched - received) * 1000,
                               engine_ttft_ms=(done - dispatched) * 1000,
                               engine_total_ms=(done - dispatched) * 1000),
        ))

    async def _relay(
        self, engine: EngineClient, request: InferenceRequest, reply: Route, path: str,
        received: float, progress: _Progress,
    ) -> None:
        """Stream from the engine; relay chunks (or gather them into one reply).

        The agent always streams from its engine, with usage on the stream as it
        goes, even for a client that wants one reply: that way the tokens of a
        request cancelled halfway are still known, and billed.
        """
        dispatched = time.perf_counter()
        first_token: float | None = None
        seq = 0
        last: list[ChoiceDelta] = []
        gathered: list[EngineChunk] = []
        assert self.outbox is not None
        send = self.outbox.send  # once per token: no wrapper on this path
        async for batch in engine.stream(path, request.body):
            for chunk in batch.chunks:
                if chunk.usage is not None:
                    progress.prompt_tokens = chunk.usage.prompt_tokens
                    progress.completion_tokens = chunk.usage.completion_tokens
                    details = chunk.usage.prompt_tokens_details
                    progress.cached_tokens = details.cached_tokens if details else 0
            if not request.stream:
                gathered.extend(batch.chunks)
                continue
            deltas = _merge(batch.chunks)
            if not deltas:
                continue
            if first_token is None:
                first_token = time.perf_counter()
            if batch.done:
                # The stream ended in this same read: these deltas ride on the
                # Final message instead of a message of their own.
                last = deltas
                continue
            await send(reply, StreamChunk(request_id=request.request_id, seq=seq, choices=deltas))
            seq += 1
            progress.tokens_sent = True
        done = time.perf_counter()
        if not request.stream:
            last = _merge(gathered)
            first_token = done
        await self._reply(reply, Final(
            request_id=request.request_id, pod=self.node_id, metro=self.metro, tier=self.tier,
            seal=self._seal_word, attestation=self._attestation_word, choices=last,
            usage=Usage(prompt_tokens=progress.prompt_tokens,
                        cached_tokens=progress.cached_tokens,
                        completion_tokens=progress.completion_tokens),
            timing=AgentTiming(
                queue_ms=(dispatched - received) * 1000,
                engine_ttft_ms=((first_token or done) - dispatched) * 1000,
                engine_total_ms=(done - dispatched) * 1000,
            ),
        ))


def _merge(chunks: list[EngineChunk]) -> list[ChoiceDelta]:
    """Coalesce the deltas of chunks that arrived together, per choice."""
    if len(chunks) == 1 and len(choices := chunks[0].choices) == 1:
        # A real engine's usual event: one token of one choice (nothing to coalesce).
        choice = choices[0]
        if choice.logprobs is None:
            piece = choice.new_text()
            if not piece and choice.finish_reason is None:
                return []
            return [ChoiceDelta(index=choice.index, content=piece or "",
                                finish_reason=choice.finish_reason)]
    text: dict[int, list[str]] = {}
    finish: dict[int, str] = {}
    logprobs: dict[int, list[bytes]] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            if piece := choice.new_text():
                text.setdefault(choice.index, []).append(piece)
            if choice.finish_reason is not None:
                finish[choice.index] = choice.finish_reason
            if choice.logprobs is not None and (entries := choice.logprobs.entries()):
                logprobs.setdefault(choice.index, []).extend(entries)
    return [
        ChoiceDelta(
            index=index, content="".join(text.get(index, ())), finish_reason=finish.get(index),
            logprobs=b"[" + b",".join(logprobs[index]) + b"]" if index in logprobs else b"",
        )
        for index in sorted(text.keys() | finish.keys() | logprobs.keys())
    ]
