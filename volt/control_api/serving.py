"""What every inference endpoint shares: place, dispatch, wait, relay.

A request is validated by its endpoint, placed on a pod from the routing view,
and published to the pod's metro-local subject. The API waits for the pod's
first reply before answering, so errors that happen before any token (unknown
model on the pod, context too long, pod gone) still get their proper HTTP
status, and a pod that vanished since the last view is skipped for another.

Streams relay the pod's replies as SSE. Whatever arrived together goes out in
one write, so a fast engine costs few writes while the first token is never
held back. A client that disconnects cancels the handler, and the ``finally``
blocks tell the pod to stop generating.

The endpoints (``chat``, ``completions``) only translate between OpenAI's
shapes and these calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import msgspec

from volt.control_api.admission import Admission
from volt.control_api.affinity import AffinityIndex, prefix_blocks
from volt.control_api.errors import (
    ApiError,
    DeadlineExceeded,
    InvalidRequest,
    ModelNotFound,
    PermissionDenied,
    ServiceUnavailable,
    UpstreamError,
    error_event,
)
from volt.control_api.inference import InferenceClient, PodGone, Reply, ReplyChannel
from volt.control_api.routing import AtCapacity, Router
from volt.identity import Principal
from volt.placement import PlacementQuery
from volt.protocol.chat import StreamOptions
from volt.protocol.common import (
    CompletionUsage,
    PromptTokensDetails,
    VoltBlock,
    VoltOptions,
    VoltTiming,
)
from volt.wire import ChoiceDelta, Final, InferenceError, InferenceRequest, NodeView, StreamChunk

DONE = b"data: [DONE]\n\n"
MAX_ATTEMPTS = 3
ENGINE_STREAM = StreamOptions(include_usage=True, continuous_usage_stats=True)
"""What the pod is always asked for: a stream with usage as it goes. The pod
then knows the tokens of every request, cancelled ones included, and metering
bills them (``InferenceRequest.stream`` says what the client wants)."""

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class JsonReply:
    body: bytes
    status: int = 200


@dataclass(frozen=True, slots=True)
class StreamReply:
    """Server-sent events; iterating drives the request, closing it cancels."""

    events: AsyncIterator[tuple[bytes, bool]]
    """(bytes, last): ``last`` lets the server end the response in the same write."""
    close: Callable[[], Awaitable[None]]
    """Always awaited by whoever got this reply, consumed or not: a stream whose
    client left before the first event never runs its generator, whose own
    cleanup would then never run (the pod slot, the channel, the pod's work)."""


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]+)`")


def decode_request(decoder: msgspec.json.Decoder[T], body: bytes) -> T:
    """The request, or a 400 that names the field at fault."""
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        param = where.rstrip("`") or None
        unknown = _UNKNOWN_FIELD.search(message)
        if unknown is not None:  # msgspec names the field itself, not as a path
            param = f"{param}.{unknown[1]}" if param else unknown[1]
        raise InvalidRequest(f"Invalid value for `{param}`: {message}" if param else message,
                             param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}. "
            "The body must be a JSON object."
        ) from exc
    except RecursionError:
        raise InvalidRequest("The JSON body is nested too deeply.") from None


def placement_query(model: str, options: VoltOptions | None, principal: Principal,
                    router: Router) -> PlacementQuery:
    """Where a request may run: what it asked for, within its tenant's catalog.

    A model outside the catalog does not exist for the tenant (404); pinning a
    metro or tier outside it is refused (403), never silently widened; with no
    pin, the catalog's metros and tiers are the limit.
    """
    catalog = principal.catalog
    card = router.catalog.get(model)
    tuned = card is not None and bool(card.org_id)
    if tuned and card is not None and card.org_id != principal.org_id:
        raise ModelNotFound(model)  # another org's tuned model does not exist for this one
    if not catalog.allows_model(card.base if tuned and card is not None else model):
        raise ModelNotFound(model)
    router.model(model)
    pinned = options.metros() if options is not None else None
    if tuned and card is not None:
        # A tuned model is served only in the metro its adapter (trained on the
        # org's data) was made in, by the engines of its base model.
        if pinned is not None and card.metro not in pinned:
            raise InvalidRequest(f"The model `{model}` is served only in metro {card.metro}.",
                                 param="volt.metro", code="model_not_in_metro")
        pinned = [card.metro]
        model = card.base
    tier = options.tier if options is not None else None
    metros: frozenset[str] | None = frozenset(pinned) if pinned is not None else None
    if catalog.metros is not None:
        if metros is None:
            metros = catalog.metros
        elif not metros <= catalog.metros:
            outside = ", ".join(sorted(metros - catalog.metros))
            raise PermissionDenied(f"Your organization may not use metro {outside}.",
                                   param="volt.metro", code="metro_not_allowed")
    if tier is not None and catalog.tiers is not None and tier not in catalog.tiers:
        raise PermissionDenied(f"Your organization may not use tier {tier}.",
                               param="volt.tier", code="tier_not_allowed")
    # A pin to a metro or tier Volt has no node in can never be served: say so
    # (400) rather than answer 503, which invites retries that cannot succeed.
    if pinned is not None and router.has_view:
        unknown = sorted(set(pinned) - router.metros)
        if unknown:
            raise InvalidRequest(f"There is no metro {', '.join(unknown)}; metros: "
                                 f"{', '.join(sorted(router.metros))}.", param="volt.metro",
                                 code="unknown_metro")
    if tier is not None and router.has_view and tier not in router.tiers:
        raise InvalidRequest(f"There is no tier {tier}; tiers: {', '.join(sorted(router.tiers))}.",
                             param="volt.tier", code="unknown_tier")
    return PlacementQuery(model=model, metros=metros, tier=tier, tiers=catalog.tiers,
                          livemode=principal.mode == "live")


@dataclass(frozen=True, slots=True)
class Job:
    """One request, as the dispatcher sees it: where it may run, what the pod
    gets, and what decides its affinity."""

    endpoint: str
    model: str
    stream: bool
    body: bytes
    """The engine's request: OpenAI JSON without Volt's extension."""
    query: PlacementQuery
    context: str = ""
    """The prompt, as text, for prefix-aware routing."""
    session: str | None = None


@dataclass(slots=True)
class PodCall:
    """A request in flight on one pod. Times are ``perf_counter`` seconds,
    except ``deadline``, which is event-loop time."""

    node: NodeView
    request_id: str
    replies: ReplyChannel
    first: Reply
    arrived: float
    dispatched: float
    deadline: float
    principal: Principal
    closed: bool = False
    """The slot is given back and the channel forgotten (``Dispatcher.close``)."""


class Dispatcher:
    """Places requests on pods, sends them, and follows them to their end."""

    def __init__(self, router: Router, inference: InferenceClient, timeout_s: float,
                 admission: Admission | None = None,
                 on_usage: Callable[[Principal, int], None] | None = None) -> None:
        self.router = router
        self.on_usage = on_usage
        """Told each request's tokens when it ends (the key's tokens-per-minute)."""
        self.inference = inference
        self.timeout_s = timeout_s
        self.admission = admission or Admission(queue_limit=1024, per_tenant_limit=256)
        self.affinity = AffinityIndex()

    def query(self, model: str, options: VoltOptions | None,
              principal: Principal) -> PlacementQuery:
        return placement_query(model, options, principal, self.router)

    def _release(self, node: NodeView) -> None:
        """The request on ``node`` is over: free its slot for the next in turn."""
        self.router.finished(node.node_id)
        self.admission.released(node)

    async def close(self, call: PodCall, *, finished: bool = False) -> None:
        """The one end of every call, however it ends, and at most once: forget
        its channel (cancelling the pod's work unless ``finished``) and give its
        slot back. Every path calls it; the second call does nothing."""
        if call.closed:
            return
        call.closed = True
        try:
            if finished:
                self.inference.forget(call.request_id)
            else:
                await self.inference.cancel(call.node, call.request_id)
        finally:
            self._release(call.node)

    async def _place(self, query: PlacementQuery, skipped: list[str], tenant_id: str,
                     deadline: float) -> NodeView:
        """A pod with a free slot: at once, or after a fair wait in line."""
        front = False
        if self.admission.waiting(query):  # others were first: no jumping the queue
            await self.admission.wait_turn(query, tenant_id, deadline)
            front = True
        while True:
            try:
                return self.router.place(query, exclude=skipped)
            except AtCapacity:
                # A waiter whose slot was taken before it ran keeps its place.
                await self.admission.wait_turn(query, tenant_id, deadline, front=front)
                front = True

    async def start(self, job: Job, arrived: float, principal: Principal) -> PodCall:
        """Send ``job`` to the best pod for it; return once that pod answered."""
        blocks = prefix_blocks(job.context)
        session = f"{principal.org_id}:{job.session}" if job.session else None
        affinity = self.affinity.matches(blocks)
        if (pinned := self.affinity.session_node(session)) is not None:
            affinity[pinned] = 1.0
        if job.model != job.query.model:  # a tuned model: first where its adapter is loaded
            for node_id in self.router.with_adapter(job.model):
                affinity[node_id] = 1.0
        query = dataclasses.replace(job.query, affinity=affinity) if affinity else job.query
        call = await self._dispatch(query, job, arrived, principal)
        self.affinity.served(blocks, call.node.node_id, session)
        return call

    async def _dispatch(
        self, query: PlacementQuery, job: Job, arrived: float, principal: Principal,
    ) -> PodCall:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s - (time.perf_counter() - arrived)
        request_id = os.urandom(12).hex()
        skipped: list[str] = []
        for attempt in range(MAX_ATTEMPTS):
            node = await self._place(query, skipped, principal.org_id, deadline)
            attempt_id = f"{request_id}{attempt}"
            self.router.started(node.node_id)
            try:
                replies = await self.inference.send(node, InferenceRequest(
                    request_id=attempt_id, endpoint=job.endpoint,  # type: ignore[arg-type]
                    model=job.model, stream=job.stream, body=job.body,
                    deadline_unix=time.time() + (deadline - loop.time()),
                    tenant_id=principal.org_id, key_id=principal.key_id,
                    spiffe_id=principal.spiffe_id, livemode=principal.mode == "live",
                ))
            except BaseException:
                self._release(node)  # the slot was taken; nothing was sent
                raise
            dispatched = time.perf_counter()
            try:
                first = await replies.get(deadline)
            except BaseException as exc:  # deadline, or the client went away
                await self.inference.cancel(node, attempt_id)
                self._release(node)
                if isinstance(exc, TimeoutError):
                    raise DeadlineExceeded("The request ran past its deadline.") from exc
                raise
            if isinstance(first, PodGone) or (
                isinstance(first, InferenceError) and first.retryable
            ):
                # Gone (before answering anything), or momentarily full: the
                # client has seen nothing yet, so try another pod.
                self.inference.forget(attempt_id)
                self._release(node)
                skipped.append(node.node_id)
                continue
            if isinstance(first, InferenceError):
                self.inference.forget(attempt_id)
                self._release(node)
                raise UpstreamError(first.status, first.code, first.message)
            return PodCall(node, attempt_id, replies, first, arrived, dispatched, deadline,
                           principal)
        raise ServiceUnavailable(f"No pod could take a `{query.model}` request; retry shortly.")

    def _used(self, call: PodCall, final: Final) -> None:
        if self.on_usage is not None:
            self.on_usage(call.principal, final.usage.total_tokens)

    def volt_block(self, call: PodCall, final: Final, first_token: float | None) -> VoltBlock:
        now = time.perf_counter()
        total_ms = (now - call.arrived) * 1000
        return VoltBlock(
            pod=final.pod, metro=final.metro, tier=final.tier,
            seal=final.seal if final.seal in ("sealed", "insecure") else "unknown",  # type: ignore[arg-type]
            attestation="attested" if final.attestation == "attested" else "not_attested",
            timing=VoltTiming(
                queue_ms=round((call.dispatched - call.arrived) * 1000 + final.timing.queue_ms, 3),
                ttft_ms=round((first_token - call.arrived) * 1000 if first_token else total_ms, 3),
                total_ms=round(total_ms, 3),
            ),
        )

    async def finish(self, call: PodCall, parts: list[Reply] | None = None) -> Final:
        """Wait for the pod's whole answer (a client that wants one reply);
        the messages before the end go to ``parts`` when it is given."""
        try:
            reply = call.first
            while not isinstance(reply, Final):
                if isinstance(reply, InferenceError):
                    await self.close(call, finished=True)  # the pod ended it
                    raise UpstreamError(reply.status, reply.code, reply.message)
                if isinstance(reply, PodGone):
                    await self.close(call, finished=True)
                    raise ServiceUnavailable("The pod serving this request went away; retry.")
                if parts is not None:
                    parts.append(reply)
                reply = await call.replies.get(call.deadline)
            self._used(call, reply)
            await self.close(call, finished=True)
            return reply
        except TimeoutError as exc:
            raise DeadlineExceeded("The request ran past its deadline.") from exc
        finally:
            await self.close(call)  # the pod's work is cancelled unless it finished

    async def relay(
        self, call: PodCall, render: Callable[[Reply, list[bytes]], bool],
    ) -> AsyncIterator[tuple[bytes, bool]]:
        """The stream's writes: ``render`` appends the SSE bytes for one pod reply
        and says whether the stream is over (it handles tokens and the end; an
        error or a lost pod ends the stream with an OpenAI error event here)."""
        def step(reply: Reply, out: list[bytes]) -> bool:
            if isinstance(reply, InferenceError | PodGone):
                error: ApiError = (
                    UpstreamError(reply.status, reply.code, reply.message)
                    if isinstance(reply, InferenceError)
                    else ServiceUnavailable("The pod serving this request went away.")
                )
                out.append(error_event(error) + DONE)
                return True
            if isinstance(reply, Final):
                self._used(call, reply)
            return render(reply, out)

        done = False
        reply = call.first
        try:
            while True:
                out: list[bytes] = []
                done = step(reply, out)
                while not done and call.replies.pending():
                    done = step(call.replies.take(), out)
                yield b"".join(out), done
                if done:
                    return
                try:
                    reply = await call.replies.get(call.deadline)
                except TimeoutError:
                    late = DeadlineExceeded("The request ran past its deadline.")
                    yield error_event(late) + DONE, True
                    return
        finally:
            await self.close(call, finished=done)


class ChunkFormat(Protocol):
    """How one endpoint writes a stream's events (chat chunks, text chunks)."""

    def chunk(self, choices: list[Any],
              usage: CompletionUsage | msgspec.UnsetType | None = msgspec.UNSET,
              volt: VoltBlock | None = None) -> bytes:
        """One SSE event: ``data: {...}``."""
        ...

    def choice(self, delta: ChoiceDelta) -> Any:
        """The choice for a delta that carries text or log-probabilities."""
        ...

    def closing(self, index: int, finish_reason: str) -> Any:
        """The choice that ends choice ``index``."""
        ...


def usage_of(final: Final) -> CompletionUsage:
    usage = final.usage
    return CompletionUsage(prompt_tokens=usage.prompt_tokens,
                           completion_tokens=usage.completion_tokens,
                           total_tokens=usage.total_tokens,
                           prompt_tokens_details=PromptTokensDetails(
                               cached_tokens=usage.cached_tokens))


def stream_events(dispatcher: Dispatcher, call: PodCall, fmt: ChunkFormat,
                  options: StreamOptions | None) -> AsyncIterator[tuple[bytes, bool]]:
    """A stream's SSE writes: token chunks as they come, then the closing
    choices, the usage chunk if asked for, and ``[DONE]``. The last chunk before
    ``[DONE]`` carries the ``volt`` block."""
    include_usage = options is not None and options.include_usage
    # With usage asked for, OpenAI's chunks carry "usage": null until the last.
    pending_usage: CompletionUsage | msgspec.UnsetType | None = (
        None if include_usage else msgspec.UNSET)
    finish: dict[int, str] = {}
    first_token: float | None = None

    def render_deltas(deltas: list[ChoiceDelta], out: list[bytes]) -> None:
        nonlocal first_token
        for delta in deltas:
            if delta.finish_reason is not None:
                finish[delta.index] = delta.finish_reason
            if delta.content or delta.logprobs:
                # One choice per chunk, as OpenAI streams them (with n > 1 the
                # pod's deltas for several choices may arrive together).
                first_token = first_token or time.perf_counter()
                out.append(fmt.chunk([fmt.choice(delta)], usage=pending_usage))

    def render(reply: Reply, out: list[bytes]) -> bool:
        if isinstance(reply, StreamChunk):
            render_deltas(reply.choices, out)
            return False
        assert isinstance(reply, Final)
        render_deltas(reply.choices, out)
        volt = dispatcher.volt_block(call, reply, first_token)
        # Each choice's finish in a chunk of its own, as OpenAI sends them; the
        # volt block rides on the last chunk before [DONE].
        closing = sorted(finish.items()) or [(0, "stop")]
        for position, (index, reason) in enumerate(closing):
            last = position == len(closing) - 1 and not include_usage
            if include_usage:
                out.append(fmt.chunk([fmt.closing(index, reason)], usage=None))
            else:
                out.append(fmt.chunk([fmt.closing(index, reason)], volt=volt if last else None))
        if include_usage:
            out.append(fmt.chunk([], usage=usage_of(reply), volt=volt))
        out.append(DONE)
        return True

    return dispatcher.relay(call, render)


def engine_body(encoder: msgspec.json.Encoder, req: Any) -> bytes:
    """The request as the pod gets it: Volt's extension removed, always a
    stream with usage as it goes (see ``ENGINE_STREAM``)."""
    return encoder.encode(msgspec.structs.replace(
        req, volt=None, stream=True, stream_options=ENGINE_STREAM,
    ))
