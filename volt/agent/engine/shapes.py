"""How the CPU engine writes generated tokens: as chat or as text completions.

Generation is the same for ``/v1/chat/completions`` and ``/v1/completions``;
only the JSON around the tokens differs. A shape renders one request's output:
the stream's frames, or the whole reply, in OpenAI's (and vLLM's) format.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable

import msgspec

from volt.agent.engine.backends import logprob_text
from volt.agent.engine.sampling import TokenLogprob as SampledLogprob
from volt.protocol.chat import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    Choice,
    ChoiceLogprobs,
    ChunkChoice,
    Delta,
    TokenLogprob,
    TopLogprob,
)
from volt.protocol.common import CompletionUsage
from volt.protocol.completions import Completion, CompletionChoice, CompletionLogprobs

_json = msgspec.json.Encoder()

TokenBytes = Callable[[int], bytes]
"""A token id's real bytes (``Backend.token_bytes``); its text is ``logprob_text``."""


class TokenFrames:
    """Pre-encoded SSE frames for one stream: per token only the text is encoded.

    Equal, byte for byte, to encoding a whole chunk per token
    (``tests/agent/test_cpu_engine.py`` checks it); 64 tokens cost one encode
    each instead of a whole chunk each.
    """

    def __init__(self, template: bytes, field: bytes) -> None:
        """``template``: a one-choice chunk whose ``field`` (``content`` or
        ``text``) holds the marker string "\\x00"."""
        marker = b'"' + field + b'":"\\u0000"'
        before, _, after = template.partition(marker)
        self._prefix = b"data: " + before + b'"' + field + b'":'
        self._suffix = after + b"\n\n"
        # The same frame with usage: the chunk's closing brace moves after it.
        self._suffix_before_usage = after[:-1] + b',"usage":'

    def token(self, piece: str, usage: CompletionUsage | None = None) -> bytes:
        if usage is None:
            return self._prefix + _json.encode(piece) + self._suffix
        return (self._prefix + _json.encode(piece) + self._suffix_before_usage
                + _json.encode(usage) + b"}\n\n")

    def tokens(self, pieces: list[str]) -> bytes:
        """Frames for many pieces at once: the hot loop, without a call per token."""
        prefix, suffix, encode = self._prefix, self._suffix, _json.encode
        return b"".join([prefix + encode(piece) + suffix for piece in pieces])


def _sse(event: msgspec.Struct) -> bytes:
    return b"data: " + _json.encode(event) + b"\n\n"


class ChatShape:
    def __init__(self, request_id: str, created: int, model: str,
                 token_bytes: TokenBytes) -> None:
        self.request_id, self.created, self.model = request_id, created, model
        self._bytes = token_bytes

    def frames(self) -> TokenFrames:
        return TokenFrames(_json.encode(ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model,
            choices=[ChunkChoice(index=0, delta=Delta(content="\x00"))],
        )), b"content")

    def opening(self, choices: int) -> list[bytes]:
        """OpenAI's streams open each choice with the assistant role."""
        return [self.chunk(i, "", usage=None, role=True) for i in range(choices)]

    def logprobs(self, entries: list[SampledLogprob]) -> ChoiceLogprobs:
        token_bytes = self._bytes

        def top(token_id: int, logprob: float) -> TopLogprob:
            raw = token_bytes(token_id)
            return TopLogprob(token=logprob_text(raw), logprob=logprob, bytes=list(raw))

        content = []
        for e in entries:
            raw = token_bytes(e.token_id)
            content.append(TokenLogprob(
                token=logprob_text(raw), logprob=e.logprob if e.logprob is not None else -9999.0,
                bytes=list(raw), top_logprobs=[top(i, lp) for i, lp in e.top or ()]))
        return ChoiceLogprobs(content=content)

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None,
              logprobs: list[SampledLogprob] | None = None,
              usage: CompletionUsage | None = None, *, role: bool = False) -> bytes:
        delta = Delta(role="assistant", content=text) if role else Delta(content=text)
        return _sse(ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model,
            choices=[ChunkChoice(
                index=index, delta=delta, finish_reason=finish_reason,
                logprobs=self.logprobs(logprobs) if logprobs is not None else None,
            )],
            usage=usage,
        ))

    def usage_chunk(self, usage: CompletionUsage) -> bytes:
        return _sse(ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model, choices=[], usage=usage,
        ))

    def completion(self, texts: list[str], finish: list[str | None],
                   logprobs: list[list[SampledLogprob]] | None, usage: CompletionUsage) -> bytes:
        return _json.encode(ChatCompletion(
            id=self.request_id, created=self.created, model=self.model,
            choices=[
                Choice(index=i, message=AssistantMessage(content=text), finish_reason=finish[i],
                       logprobs=self.logprobs(logprobs[i]) if logprobs is not None else None)
                for i, text in enumerate(texts)
            ],
            usage=usage,
        ))


class TextShape:
    """``/v1/completions``; ``echo`` puts each choice's prompt before its text."""

    def __init__(self, request_id: str, created: int, model: str, token_bytes: TokenBytes,
                 echo: list[str] | None, choices_per_prompt: int) -> None:
        self.request_id, self.created, self.model = request_id, created, model
        self._bytes = token_bytes
        self.echo = echo
        self.per_prompt = choices_per_prompt
        self._offsets: dict[int, int] = {}  # choice -> characters written so far
        self.prompt_logprobs: list[list[SampledLogprob]] | None = None
        """Per prompt, with ``echo`` and ``logprobs``: the echoed tokens' entries
        (the first token's logprob is null: nothing came before it)."""

    def _echoed_logprobs(self, index: int) -> list[SampledLogprob] | None:
        if self.prompt_logprobs is None:
            return None
        return self.prompt_logprobs[index // self.per_prompt]

    def frames(self) -> TokenFrames:
        return TokenFrames(_json.encode(Completion(
            id=self.request_id, created=self.created, model=self.model,
            choices=[CompletionChoice(index=0, text="\x00", finish_reason=None)],
        )), b"text")

    def _echoed(self, index: int) -> str:
        return self.echo[index // self.per_prompt] if self.echo is not None else ""

    def opening(self, choices: int) -> list[bytes]:
        if self.echo is None:
            return []
        return [self.chunk(i, self._echoed(i), logprobs=self._echoed_logprobs(i))
                for i in range(choices) if self._echoed(i)]

    def logprobs(self, index: int, entries: list[SampledLogprob]) -> CompletionLogprobs:
        """``text_offset`` counts characters of the returned text: a token that
        holds only part of a character moves the offset when the character is
        complete."""
        token_bytes = self._bytes
        characters = codecs.getincrementaldecoder("utf-8")(errors="replace")
        tokens, offsets = [], []
        offset = self._offsets.get(index, 0)
        for entry in entries:
            raw = token_bytes(entry.token_id)
            tokens.append(logprob_text(raw))
            offsets.append(offset)
            offset += len(characters.decode(raw))
        return CompletionLogprobs(
            tokens=tokens,
            token_logprobs=[e.logprob for e in entries],
            top_logprobs=[None if e.top is None else
                          {logprob_text(token_bytes(i)): lp for i, lp in e.top}
                          for e in entries],
            text_offset=offsets,
        )

    def chunk(self, index: int, text: str | None, finish_reason: str | None = None,
              logprobs: list[SampledLogprob] | None = None,
              usage: CompletionUsage | None = None) -> bytes:
        rendered = self.logprobs(index, logprobs) if logprobs is not None else None
        self._offsets[index] = self._offsets.get(index, 0) + len(text or "")
        return _sse(Completion(
            id=self.request_id, created=self.created, model=self.model,
            choices=[CompletionChoice(index=index, text=text or "", finish_reason=finish_reason,
                                      logprobs=rendered)],
            usage=usage,
        ))

    def usage_chunk(self, usage: CompletionUsage) -> bytes:
        return _sse(Completion(
            id=self.request_id, created=self.created, model=self.model, choices=[], usage=usage,
        ))

    def completion(self, texts: list[str], finish: list[str | None],
                   logprobs: list[list[SampledLogprob]] | None, usage: CompletionUsage) -> bytes:
        choices = []
        for i, text in enumerate(texts):
            echoed = self._echoed(i)
            entries = logprobs[i] if logprobs is not None else None
            if entries is not None and (prompt := self._echoed_logprobs(i)):
                self._offsets[i] = 0  # the prompt's tokens first, from the text's start
                entries = prompt + entries
            else:
                self._offsets[i] = len(echoed)
            choices.append(CompletionChoice(
                index=i, text=echoed + text, finish_reason=finish[i],
                logprobs=self.logprobs(i, entries) if entries is not None else None,
            ))
        return _json.encode(Completion(
            id=self.request_id, created=self.created, model=self.model, choices=choices,
            usage=usage,
        ))


Shape = ChatShape | TextShape
