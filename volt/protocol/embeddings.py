"""``/v1/embeddings`` request and response types (OpenAI-compatible)."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from volt.protocol.common import VoltBlock, VoltOptions

MAX_INPUTS = 2048
"""OpenAI's limit on inputs per request."""


class EmbeddingRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    model: str
    # Token ids (a list of ints, or of lists) decode too, so that they get a
    # clear refusal below rather than msgspec's "expected str".
    input: str | Annotated[list[str | int | list[int]],
                           msgspec.Meta(min_length=1, max_length=MAX_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(ge=1)] | None = None
    user: str | None = None
    volt: VoltOptions | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.input, str) and not all(isinstance(i, str) for i in self.input):
            raise ValueError("`input` must be text: token-id inputs are not supported")

    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else self.input  # type: ignore[return-value]


class Embedding(msgspec.Struct, kw_only=True, tag_field="object", tag="embedding"):
    index: int
    embedding: list[float] | str
    """Floats, or (``encoding_format: base64``) the little-endian float32 bytes in base64."""


class EmbeddingUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(msgspec.Struct, kw_only=True, omit_defaults=True, tag_field="object",
                    tag="list"):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    volt: VoltBlock | None = None
