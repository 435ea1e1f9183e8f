"""``POST /v1/chat/completions``: OpenAI's chat shapes around the dispatcher.

``serving`` places and follows the request; this module validates the chat
request and writes the pod's replies as a ``chat.completion`` or as
``chat.completion.chunk`` events. The chunk with ``finish_reason`` (or, with
``stream_options.include_usage``, the usage chunk) is the last before
``[DONE]`` and carries the ``volt`` block.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec

from volt.control_api.inference import Reply
from volt.control_api.serving import (
    DONE,
    Dispatcher,
    Job,
    JsonReply,
    PodCall,
    StreamReply,
    decode_request,
    engine_body,
)
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
from volt.protocol.common import CompletionUsage, PromptTokensDetails
from volt.store import Principal
from volt.wire import ChoiceDelta, Final, StreamChunk

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(ChatCompletionRequest)
_logprobs = msgspec.json.Decoder(list[TokenLogprob])


def _choice_logprobs(delta: ChoiceDelta) -> ChoiceLogprobs | None:
    return ChoiceLogprobs(content=_logprobs.decode(delta.logprobs)) if delta.logprobs else None


def usage_of(final: Final) -> CompletionUsage:
    usage = final.usage
    return CompletionUsage(prompt_tokens=usage.prompt_tokens,
                           completion_tokens=usage.completion_tokens,
                           total_tokens=usage.total_tokens,
                           prompt_tokens_details=PromptTokensDetails(
                               cached_tokens=usage.cached_tokens))


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
            return StreamReply(self._events(call, req))
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
        chunk_id = "chatcmpl-" + call.request_id
        created = int(time.time())
        model = req.model
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        finish: dict[int, str] = {}
        started: set[int] = set()  # choices whose first delta (with the role) went out
        first_token: float | None = None

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
            if isinstance(reply, StreamChunk):
                render_deltas(reply.choices, out)
                return False
            assert isinstance(reply, Final)
            render_deltas(reply.choices, out)
            volt = self.dispatcher.volt_block(call, reply, first_token)
            closing = [
                ChunkChoice(index=i, delta=Delta(), finish_reason=reason)
                for i, reason in sorted(finish.items())
            ] or [ChunkChoice(index=0, delta=Delta(), finish_reason="stop")]
            if include_usage:
                out.append(chunk(closing))
                out.append(chunk([], usage=usage_of(reply), volt=volt))
            else:
                out.append(chunk(closing, volt=volt))
            out.append(DONE)
            return True

        return self.dispatcher.relay(call, render)
