"""``/v1/completions`` request and response types (OpenAI's legacy text API).

Like ``chat``, one set of Structs validates requests in the API, decodes them
in the CPU engine and generates the OpenAPI document.
"""

from __future__ import annotations

from typing import Annotated, cast

import msgspec

from volt.protocol.chat import Penalty, PositiveInt, Probability, StreamOptions, Temperature
from volt.protocol.common import CompletionUsage, VoltBlock, VoltOptions

TokenId = Annotated[int, msgspec.Meta(ge=0)]
# A text, a list of texts, a list of token ids, or a list of those (msgspec
# unions hold one array type, so the list's kind is checked after decoding).
Prompt = str | Annotated[list[str | TokenId | list[TokenId]], msgspec.Meta(min_length=1)]
MAX_PROMPTS = 64


class CompletionRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    prompt: Prompt
    max_tokens: PositiveInt | None = 16
    """OpenAI's default for this endpoint is 16 tokens (chat's is "as many as fit")."""
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
    logprobs: Annotated[int, msgspec.Meta(ge=0, le=20)] | None = None
    """The number of most likely tokens to list per position (0: only the chosen one)."""
    echo: bool = False
    suffix: str | None = None
    best_of: PositiveInt | None = None
    user: str | None = None
    volt: VoltOptions | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str):
            kinds = {type(item) for item in self.prompt}
            if len(kinds) > 1:
                raise ValueError("`prompt` must be a text, a list of texts, a list of token ids "
                                 "or a list of such lists, not a mix")
            if kinds == {int}:
                pass
            elif len(self.prompt) > MAX_PROMPTS:
                raise ValueError(f"`prompt` may hold at most {MAX_PROMPTS} prompts")
            elif kinds == {list} and not all(self.prompt):
                raise ValueError("`prompt` holds an empty list of token ids")
        if self.best_of is not None and self.best_of != self.n:
            raise ValueError("`best_of` other than `n` is not supported")
        if self.suffix:
            raise ValueError("`suffix` (insertion) is not supported")

    def prompts(self) -> list[str | list[int]]:
        """The request's prompts, each as text or as token ids."""
        prompt = self.prompt
        if isinstance(prompt, str):
            return [prompt]
        if isinstance(prompt[0], int):
            return [[int(token) for token in prompt]]  # type: ignore[arg-type]
        return cast("list[str | list[int]]", prompt)

    def token_limit(self) -> int | None:
        return self.max_tokens


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None


class Completion(
    msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="object", tag="text_completion"
):
    """A completion, or (``stream``) one chunk of one: OpenAI uses one shape for both."""

    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: CompletionUsage | msgspec.UnsetType | None = msgspec.UNSET
    """Always on a whole completion; on a stream's chunks only when usage was
    asked for (``null`` but on the last)."""
    volt: VoltBlock | None = None
