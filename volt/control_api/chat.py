"""Serving ``POST /v1/chat/completions``: validate, place, dispatch, relay.

The request is validated with the same msgspec types the OpenAPI document is
generated from, placed on a pod from the routing view, and published to the
pod's metro-local subject. The API waits for the pod's first reply before
answering, so errors that happen before any token (unknown model on the pod,
context too long, pod gone) still get their proper HTTP status, and a pod
that vanished since the last view is skipped for another.

Streams relay the pod's chunks as OpenAI SSE chunks. Whatever arrived
together goes out in one write, so a fast engine costs few writes while the
first token is never held back. The chunk with ``finish_reason`` (or, with
``stream_options.include_usage``, the usage chunk) is the last before
``[DONE]`` and carries the ``volt`` block.

A client that disconnects cancels the handler (Quart cancels it), and the
``finally`` blocks tell the pod to stop generating.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

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
from volt.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    StreamOptions,
    TokenLogprob,
)
from volt.protocol.common import CompletionUsage, VoltBlock, VoltOptions, VoltTiming
from volt.scheduler.placement import PlacementQuery
from volt.store import Principal
from volt.wire import ChoiceDelta, Final, InferenceError, InferenceRequest, NodeView, StreamChunk

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_logprobs = msgspec.json.Decoder(list[TokenLogprob])


def _choice_logprobs(delta: ChoiceDelta) -> ChoiceLogprobs | None:
    return ChoiceLogprobs(content=_logprobs.decode(delta.logprobs)) if delta.logprobs else None
_DONE = b"data: [DONE]\n\n"
MAX_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class JsonReply:
    body: bytes
    status: int = 200


@dataclass(frozen=True, slots=True)
class StreamReply:
    """Server-sent events; iterating drives the request, closing it cancels."""

    events: AsyncIterator[tuple[bytes, bool]]
    """(bytes, last): ``last`` lets the server end the response in the same write."""


def decode_request(body: bytes) -> ChatCompletionRequest:
    try:
        return _decoder.decode(body)
    except msgspec.ValidationError as exc:
        message, _, where = str(exc).partition(" - at `$.")
        param = where.rstrip("`") or None
        raise InvalidRequest(f"Invalid value for `{param}`: {message}" if param else message,
                             param=param) from exc
    except msgspec.DecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}. "
            "The body must be a JSON object."
        ) from exc


_ENGINE_STREAM = StreamOptions(include_usage=True, continuous_usage_stats=True)


def placement_query(model: str, options: VoltOptions | None, principal: Principal,
                    router: Router) -> PlacementQuery:
    """Where a request may run: what it asked for, within its tenant's catalog.

    A model outside the catalog does not exist for the tenant (404); pinning a
    metro or tier outside it is refused (403), never silently widened; with no
    pin, the catalog's metros and tiers are the limit.
    """
    catalog = principal.catalog
    if not catalog.allows_model(model):
        raise ModelNotFound(model)
    router.model(model)
    pinned = options.metros() if options is not None else None
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
    return PlacementQuery(model=model, metros=metros, tier=tier, tiers=catalog.tiers)


def _engine_body(req: ChatCompletionRequest) -> bytes:
    # The pod gets the OpenAI request minus Volt's extension, always as a
    # stream with usage as it goes (``InferenceRequest.stream`` says what the
    # client wants): the pod then knows the tokens of every request, cancelled
    # ones included, and metering bills them.
    return _encoder.encode(msgspec.structs.replace(
        req, volt=None, stream=True, stream_options=_ENGINE_STREAM,
    ))


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


class ChatCompletions:
    def __init__(self, router: Router, inference: InferenceClient, timeout_s: float,
                 admission: Admission | None = None) -> None:
        self.router = router
        self.inference = inference
        self.timeout_s = timeout_s
        self.admission = admission or Admission(queue_limit=1024, per_tenant_limit=256)
        self.affinity = AffinityIndex()

    def _release(self, node: NodeView) -> None:
        """The request on ``node`` is over: free its slot for the next in turn."""
        self.router.finished(node.node_id)
        self.admission.released(node)

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

    async def create(
        self, body: bytes, arrived: float, principal: Principal
    ) -> JsonReply | StreamReply:
        """Serve one request that arrived at ``arrived`` (``perf_counter``)."""
        req = decode_request(body)
        query = placement_query(req.model, req.volt, principal, self.router)
        blocks = prefix_blocks("".join(f"{m.role}\n{m.text()}\n" for m in req.messages))
        session = (req.volt.session if req.volt is not None else None) or req.user
        if session:
            session = f"{principal.tenant_id}:{session}"  # one tenant's session names are its own
        affinity = self.affinity.matches(blocks)
        if (pinned := self.affinity.session_node(session)) is not None:
            affinity[pinned] = 1.0
        if affinity:
            query = dataclasses.replace(query, affinity=affinity)
        call = await self._dispatch(query, req, _engine_body(req), arrived, principal)
        self.affinity.served(blocks, call.node.node_id, session)
        if req.stream:
            return StreamReply(self._events(call, req))
        return await self._complete(call, req)

    async def _dispatch(
        self, query: PlacementQuery, req: ChatCompletionRequest, body: bytes, arrived: float,
        principal: Principal,
    ) -> PodCall:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s - (time.perf_counter() - arrived)
        request_id = os.urandom(12).hex()
        skipped: list[str] = []
        for attempt in range(MAX_ATTEMPTS):
            node = await self._place(query, skipped, principal.tenant_id, deadline)
            attempt_id = f"{request_id}{attempt}"
            self.router.started(node.node_id)
            replies = await self.inference.send(node, InferenceRequest(
                request_id=attempt_id, model=req.model, stream=req.stream, body=body,
                deadline_unix=time.time() + (deadline - loop.time()),
                tenant_id=principal.tenant_id, key_id=principal.key_id,
            ))
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
            return PodCall(node, attempt_id, replies, first, arrived, dispatched, deadline)
        raise ServiceUnavailable(f"No pod could take a `{query.model}` request; retry shortly.")

    def _volt_block(self, call: PodCall, final: Final, first_token: float | None) -> VoltBlock:
        now = time.perf_counter()
        total_ms = (now - call.arrived) * 1000
        return VoltBlock(
            pod=final.pod, metro=final.metro, tier=final.tier,
            timing=VoltTiming(
                queue_ms=round((call.dispatched - call.arrived) * 1000 + final.timing.queue_ms, 3),
                ttft_ms=round((first_token - call.arrived) * 1000 if first_token else total_ms, 3),
                total_ms=round(total_ms, 3),
            ),
        )

    async def _complete(self, call: PodCall, req: ChatCompletionRequest) -> JsonReply:
        try:
            reply = call.first
            while not isinstance(reply, Final):
                if isinstance(reply, InferenceError):
                    raise UpstreamError(reply.status, reply.code, reply.message)
                if isinstance(reply, PodGone):
                    raise ServiceUnavailable("The pod serving this request went away; retry.")
                reply = await call.replies.get(call.deadline)
        except TimeoutError as exc:
            await self.inference.cancel(call.node, call.request_id)
            raise DeadlineExceeded("The request ran past its deadline.") from exc
        except asyncio.CancelledError:
            await self.inference.cancel(call.node, call.request_id)
            raise
        finally:
            self.inference.forget(call.request_id)
            self._release(call.node)
        usage = reply.usage
        completion = ChatCompletion(
            id="chatcmpl-" + call.request_id,
            created=int(time.time()),
            model=req.model,
            choices=[
                Choice(index=c.index, message=AssistantMessage(content=c.content),
                       finish_reason=c.finish_reason, logprobs=_choice_logprobs(c))
                for c in reply.choices
            ],
            usage=CompletionUsage(
                prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens,
                total_tokens=usage.total_tokens,
            ),
            volt=self._volt_block(call, reply, None),
        )
        return JsonReply(_encoder.encode(completion))

    async def _events(
        self, call: PodCall, req: ChatCompletionRequest
    ) -> AsyncIterator[tuple[bytes, bool]]:
        chunk_id = "chatcmpl-" + call.request_id
        created = int(time.time())
        model = req.model
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        finish: dict[int, str] = {}
        started: set[int] = set()  # choices whose first delta (with the role) went out
        first_token: float | None = None
        done = False

        def chunk(choices: list[ChunkChoice], **extra: object) -> bytes:
            event = ChatCompletionChunk(
                id=chunk_id, created=created, model=model, choices=choices, **extra  # type: ignore[arg-type]
            )
            return b"data: " + _encoder.encode(event) + b"\n\n"

        def render_deltas(deltas: list[ChoiceDelta], out: list[bytes]) -> None:
            nonlocal first_token
            choices = []
            for delta in deltas:
                if delta.finish_reason is not None:
                    finish[delta.index] = delta.finish_reason
                if delta.content or delta.logprobs:
                    choices.append(ChunkChoice(index=delta.index, delta=Delta(
                        role=None if delta.index in started else "assistant",
                        content=delta.content,
                    ), logprobs=_choice_logprobs(delta)))
                    started.add(delta.index)
            if choices:
                first_token = first_token or time.perf_counter()
                out.append(chunk(choices))

        def render(reply: Reply, out: list[bytes]) -> bool:
            """Append the SSE bytes for one pod reply; True when the stream is over."""
            if isinstance(reply, StreamChunk):
                render_deltas(reply.choices, out)
                return False
            if isinstance(reply, Final):
                render_deltas(reply.choices, out)
                volt = self._volt_block(call, reply, first_token)
                closing = [
                    ChunkChoice(index=i, delta=Delta(), finish_reason=reason)
                    for i, reason in sorted(finish.items())
                ] or [ChunkChoice(index=0, delta=Delta(), finish_reason="stop")]
                usage = reply.usage
                if include_usage:
                    out.append(chunk(closing))
                    out.append(chunk([], usage=CompletionUsage(
                        prompt_tokens=usage.prompt_tokens,
                        completion_tokens=usage.completion_tokens,
                        total_tokens=usage.total_tokens,
                    ), volt=volt))
                else:
                    out.append(chunk(closing, volt=volt))
                out.append(_DONE)
                return True
            error: ApiError
            if isinstance(reply, InferenceError):
                error = UpstreamError(reply.status, reply.code, reply.message)
            else:
                error = ServiceUnavailable("The pod serving this request went away.")
            out.append(error_event(error) + _DONE)
            return True

        reply = call.first
        try:
            while True:
                out: list[bytes] = []
                done = render(reply, out)
                while not done and call.replies.pending():
                    done = render(call.replies.take(), out)
                yield b"".join(out), done
                if done:
                    return
                try:
                    reply = await call.replies.get(call.deadline)
                except TimeoutError:
                    late = DeadlineExceeded("The request ran past its deadline.")
                    yield error_event(late) + _DONE, True
                    return
        finally:
            if done:
                self.inference.forget(call.request_id)
            else:
                await self.inference.cancel(call.node, call.request_id)
            self._release(call.node)
