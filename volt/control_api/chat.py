"""``POST /v1/chat/completions``: OpenAI's chat shapes around the dispatcher.

``serving`` places and follows the request; this module validates the chat
request and writes the pod's replies as a ``chat.completion`` or as
``chat.completion.chunk`` events. The chunk with ``finish_reason`` (or, with
``stream_options.include_usage``, the usage chunk) is the last before
``[DONE]`` and carries the ``volt`` block.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator

import msgspec

from volt.control_api.serving import (
    Dispatcher,
    Job,
    JsonReply,
    PodCall,
    StreamReply,
    decode_request,
    engine_body,
    stream_events,
    usage_of,
)
from volt.identity import Principal
from volt.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    TokenLogprob,
)
from volt.protocol.common import CompletionUsage, VoltBlock
from volt.wire import ChoiceDelta

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_logprobs = msgspec.json.Decoder(list[TokenLogprob])


def _choice_logprobs(delta: ChoiceDelta) -> ChoiceLogprobs | None:
    return ChoiceLogprobs(content=_logprobs.decode(delta.logprobs)) if delta.logprobs else None


class _ChatChunks:
    """``chat.completion.chunk`` events; a choice's first delta names the role."""

    def __init__(self, chunk_id: str, model: str) -> None:
        self.chunk_id, self.model, self.created = chunk_id, model, int(time.time())
        self.started: set[int] = set()

    def chunk(self, choices: list[ChunkChoice],
              usage: CompletionUsage | msgspec.UnsetType | None = msgspec.UNSET,
              volt: VoltBlock | None = None) -> bytes:
        return b"data: " + _encoder.encode(ChatCompletionChunk(
            id=self.chunk_id, created=self.created, model=self.model, choices=choices,
            usage=usage, volt=volt,
        )) + b"\n\n"

    def choice(self, delta: ChoiceDelta) -> ChunkChoice:
        first = delta.index not in self.started
        self.started.add(delta.index)
        return ChunkChoice(index=delta.index, delta=Delta(role="assistant" if first else None,
                                                          content=delta.content),
                           logprobs=_choice_logprobs(delta))

    def closing(self, index: int, finish_reason: str) -> ChunkChoice:
        return ChunkChoice(index=index, delta=Delta(), finish_reason=finish_reason)


class ChatCompletions:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def create(
        self, body: bytes, arrived: float, principal: Principal
    ) -> JsonReply | StreamReply:
        """Serve one request that arrived at ``arrived`` (``perf_counter``)."""
        req = decode_request(_decoder, body)
        job = Job(
            endpoint="chat.completions", model=req.model, stream=req.stream,
            body=engine_body(_encoder, req),
            query=self.dispatcher.query(req.model, req.volt, principal),
            context="".join(f"{m.role}\n{m.text()}\n" for m in req.messages),
            session=(req.volt.session if req.volt is not None else None) or req.user,
        )
        call = await self.dispatcher.start(job, arrived, principal)
        if req.stream:
            return StreamReply(self._events(call, req),
                               functools.partial(self.dispatcher.close, call))
        return await self._complete(call, req)

    async def _complete(self, call: PodCall, req: ChatCompletionRequest) -> JsonReply:
        reply = await self.dispatcher.finish(call)
        completion = ChatCompletion(
            id="chatcmpl-" + call.request_id,
            created=int(time.time()),
            model=req.model,
            choices=[
                Choice(index=c.index, message=AssistantMessage(content=c.content),
                       finish_reason=c.finish_reason, logprobs=_choice_logprobs(c))
                for c in reply.choices
            ],
            usage=usage_of(reply),
            volt=self.dispatcher.volt_block(call, reply, None),
        )
        return JsonReply(_encoder.encode(completion))

    def _events(
        self, call: PodCall, req: ChatCompletionRequest
    ) -> AsyncIterator[tuple[bytes, bool]]:
        return stream_events(self.dispatcher, call,
                             _ChatChunks("chatcmpl-" + call.request_id, req.model),
                             req.stream_options)
