"""``POST /v1/completions``: OpenAI's text-completion shapes around the dispatcher.

The pod's replies carry the same deltas as chat's (text, finish reason,
log-probabilities as chat-shaped entries); this module writes them as
``text_completion`` objects, streamed or whole, with the ``volt`` block on the
last one before ``[DONE]``.
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
from volt.protocol.common import CompletionUsage, VoltBlock
from volt.protocol.completions import (
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    CompletionRequest,
)
from volt.wire import ChoiceDelta

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(CompletionRequest)


class _Top(msgspec.Struct):
    token: str
    logprob: float


class _Entry(msgspec.Struct):
    token: str
    logprob: float | None
    """None: an echoed prompt's first token (nothing came before it)."""
    top_logprobs: list[_Top] | None = []
    text_offset: int | None = None
    """The engine's, where it gave one (it counts characters, not the escaped
    text of a token that holds part of a character)."""


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
            offsets.append(entry.text_offset if entry.text_offset is not None else offset)
            offset += len(entry.token)
        return CompletionLogprobs(
            tokens=[e.token for e in entries],
            token_logprobs=[e.logprob for e in entries],
            top_logprobs=[None if e.top_logprobs is None else
                          {t.token: t.logprob for t in e.top_logprobs} for e in entries],
            text_offset=offsets,
        )


class _TextChunks:
    """``text_completion`` events (OpenAI streams the same object as the reply)."""

    def __init__(self, chunk_id: str, model: str) -> None:
        self.chunk_id, self.model, self.created = chunk_id, model, int(time.time())
        self.offsets = _Offsets()

    def chunk(self, choices: list[CompletionChoice],
              usage: CompletionUsage | msgspec.UnsetType | None = msgspec.UNSET,
              volt: VoltBlock | None = None) -> bytes:
        return b"data: " + _encoder.encode(Completion(
            id=self.chunk_id, created=self.created, model=self.model, choices=choices,
            usage=usage, volt=volt,
        )) + b"\n\n"

    def choice(self, delta: ChoiceDelta) -> CompletionChoice:
        return CompletionChoice(index=delta.index, text=delta.content, finish_reason=None,
                                logprobs=self.offsets.logprobs(delta))

    def closing(self, index: int, finish_reason: str) -> CompletionChoice:
        return CompletionChoice(index=index, text="", finish_reason=finish_reason)


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
            return StreamReply(self._events(call, req),
                               functools.partial(self.dispatcher.close, call))
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
        return stream_events(self.dispatcher, call,
                             _TextChunks("cmpl-" + call.request_id, req.model),
                             req.stream_options)
