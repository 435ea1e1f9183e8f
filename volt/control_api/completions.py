"""``POST /v1/completions``: OpenAI's text-completion shapes around the dispatcher.

The pod's replies carry the same deltas as chat's (text, finish reason,
log-probabilities as chat-shaped entries); this module writes them as
``text_completion`` objects, streamed or whole, with the ``volt`` block on the
last one before ``[DONE]``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import msgspec

from volt.control_api.chat import usage_of
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
from volt.protocol.completions import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from volt.store import Principal
from volt.wire import ChoiceDelta, Final, StreamChunk

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CompletionRequest)


class _Top(msgspec.Struct):
    token: str
    logprob: float


class _Entry(msgspec.Struct):
    token: str
    logprob: float
    top_logprobs: list[_Top] = []


_entries = msgspec.json.Decoder(list[_Entry])


class _Offsets:
    """Each choice's characters so far: ``text_offset`` counts from its start."""

    def __init__(self) -> None:
        self._seen: dict[int, int] = {}

    def logprobs(self, delta: ChoiceDelta) -> CompletionLogprobs | None:
        offset = self._seen.get(delta.index, 0)
        self._seen[delta.index] = offset + len(delta.content)
        if not delta.logprobs:
            return None
        entries = _entries.decode(delta.logprobs)
        offsets = []
        for entry in entries:
            offsets.append(offset)
            offset += len(entry.token)
        return CompletionLogprobs(
            tokens=[e.token for e in entries],
            token_logprobs=[e.logprob for e in entries],
            top_logprobs=[{t.token: t.logprob for t in e.top_logprobs} for e in entries],
            text_offset=offsets,
        )


def _context(req: CompletionRequest) -> str:
    prompt = req.prompts()[0]
    return prompt if isinstance(prompt, str) else " ".join(map(str, prompt))


class TextCompletions:
    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def create(
        self, body: bytes, arrived: float, principal: Principal
    ) -> JsonReply | StreamReply:
        req = decode_request(_decoder, body)
        job = Job(
            endpoint="completions", model=req.model, stream=req.stream,
            body=engine_body(_encoder, req),
            query=self.dispatcher.query(req.model, req.volt, principal),
            context=_context(req),
            session=(req.volt.session if req.volt is not None else None) or req.user,
        )
        call = await self.dispatcher.start(job, arrived, principal)
        if req.stream:
            return StreamReply(self._events(call, req))
        return await self._complete(call, req)

    async def _complete(self, call: PodCall, req: CompletionRequest) -> JsonReply:
        reply = await self.dispatcher.finish(call)
        offsets = _Offsets()
        completion = Completion(
            id="cmpl-" + call.request_id,
            created=int(time.time()),
            model=req.model,
            choices=[
                CompletionChoice(index=c.index, text=c.content, finish_reason=c.finish_reason,
                                 logprobs=offsets.logprobs(c))
                for c in reply.choices
            ],
            usage=usage_of(reply),
            volt=self.dispatcher.volt_block(call, reply, None),
        )
        return JsonReply(_encoder.encode(completion))

    def _events(self, call: PodCall, req: CompletionRequest) -> AsyncIterator[tuple[bytes, bool]]:
        chunk_id = "cmpl-" + call.request_id
        created = int(time.time())
        include_usage = req.stream_options is not None and req.stream_options.include_usage
        offsets = _Offsets()
        finish: dict[int, str] = {}
        first_token: float | None = None

        def chunk(choices: list[CompletionChoice], **extra: object) -> bytes:
            event = Completion(id=chunk_id, created=created, model=req.model, choices=choices,
                               **extra)  # type: ignore[arg-type]
            return b"data: " + _encoder.encode(event) + b"\n\n"

        def render_deltas(deltas: list[ChoiceDelta], out: list[bytes]) -> None:
            nonlocal first_token
            choices = []
            for delta in deltas:
                if delta.finish_reason is not None:
                    finish[delta.index] = delta.finish_reason
                if delta.content or delta.logprobs:
                    choices.append(CompletionChoice(
                        index=delta.index, text=delta.content, finish_reason=None,
                        logprobs=offsets.logprobs(delta),
                    ))
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
                CompletionChoice(index=i, text="", finish_reason=reason)
                for i, reason in sorted(finish.items())
            ] or [CompletionChoice(index=0, text="", finish_reason="stop")]
            if include_usage:
                out.append(chunk(closing))
                out.append(chunk([], usage=usage_of(reply), volt=volt))
            else:
                out.append(chunk(closing, volt=volt))
            out.append(DONE)
            return True

        return self.dispatcher.relay(call, render)
