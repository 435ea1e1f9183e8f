"""``/v1/chat/completions`` request and response types (OpenAI-compatible).

The same Structs validate client requests in the API, decode them in the CPU
engine and generate the OpenAPI document, so the three cannot drift apart.
Unknown request fields are ignored, as OpenAI's clients expect.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from volt.protocol.common import CompletionUsage, VoltBlock, VoltOptions

PositiveInt = Annotated[int, msgspec.Meta(ge=1)]
Temperature = Annotated[float, msgspec.Meta(ge=0.0, le=2.0)]
Probability = Annotated[float, msgspec.Meta(ge=0.0, le=1.0)]
Penalty = Annotated[float, msgspec.Meta(ge=-2.0, le=2.0)]


class TextPart(msgspec.Struct, kw_only=True):
    # A plain required field, not a msgspec tag: a lone tagged struct decodes
    # without its tag, and OpenAI refuses a content part that has no type.
    type: Literal["text"]
    text: str


Role = Literal["system", "developer", "user", "assistant", "tool"]


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Role
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(msgspec.Struct, kw_only=True, omit_defaults=True):
    include_usage: bool = False
    continuous_usage_stats: bool = False
    """vLLM's extension: usage so far on the stream's chunks as it goes. The agent
    asks its engine for it, so a cancelled stream's tokens are still counted."""


class ResponseFormat(msgspec.Struct, kw_only=True, omit_defaults=True):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: dict[str, Any] | None = None


class ChatCompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    messages: Annotated[list[ChatMessage], msgspec.Meta(min_length=1)]
    max_tokens: PositiveInt | None = None
    max_completion_tokens: PositiveInt | None = None
    temperature: Temperature | None = None
    top_p: Probability | None = None
    n: Annotated[int, msgspec.Meta(ge=1, le=8)] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)] | None = None
    """A 64-bit integer, as OpenAI takes it."""
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    volt: VoltOptions | None = None

    def __post_init__(self) -> None:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("`top_logprobs` needs `logprobs: true`")

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class TopLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(msgspec.Struct, kw_only=True):
    content: list[TokenLogprob] | None
    refusal: list[TokenLogprob] | None = None
    """Required by OpenAI's schema (null: Volt's models do not refuse in a channel of their own)."""


class AssistantMessage(msgspec.Struct, kw_only=True):
    content: str | None
    refusal: str | None = None
    """Required by OpenAI's schema; always null here."""
    role: Literal["assistant"] = "assistant"


class Choice(msgspec.Struct, kw_only=True):
    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletion(
    msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="object", tag="chat.completion"
):
    # ``object`` is the tag: always written, even with omit_defaults.
    id: str
    created: int
    model: str
    choices: list[Choice]
    usage: CompletionUsage
    volt: VoltBlock | None = None


class Delta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(msgspec.Struct, kw_only=True):
    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: ChoiceLogprobs | None = None


class ChatCompletionChunk(
    msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="object",
    tag="chat.completion.chunk",
):
    id: str
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: CompletionUsage | msgspec.UnsetType | None = msgspec.UNSET
    """Absent unless the client asked for usage; then ``null`` on every chunk
    but the last, as OpenAI's stream does."""
    volt: VoltBlock | None = None
