"""OpenAI-compatible types shared by every endpoint family: usage, models,
the error envelope and Volt's own ``volt`` response block."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Slug = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0
    """Prompt tokens whose KV cache the engine reused (as the engine reports them)."""


class CompletionUsage(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class VoltTiming(msgspec.Struct, kw_only=True):
    queue_ms: float
    """From the API receiving the request to the engine starting on it."""
    ttft_ms: float
    """From the API receiving the request to the first token leaving the pod."""
    total_ms: float
    """From the API receiving the request to the last token."""


class VoltBlock(msgspec.Struct, kw_only=True):
    """Where and how a request was served; on every Spark response."""

    pod: str
    metro: str
    tier: str
    timing: VoltTiming
    seal: Literal["sealed", "insecure", "unknown"] = "sealed"
    """``sealed``: the engine ran in a network namespace of its own, with no way
    out (zero egress). ``insecure``: a development node without that seal."""
    attestation: Literal["attested", "not_attested"] = "attested"
    """``attested``: the pod's node proved its measured boot (TPM quote, verified
    against the reference policy). ``not_attested``: a development node with no TPM."""


class VoltOptions(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Volt's request extension (``extra_body={"volt": {...}}`` from the openai client)."""

    metro: Slug | Annotated[list[Slug], msgspec.Meta(min_length=1)] | None = None
    """Serve only in this metro (or one of these metros; an empty list could
    never be served, so it is a 400, not a 503)."""
    tier: Slug | None = None
    """Serve only on this tier."""
    session: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    """Prefer the pod that served this session before (its context is likely
    cached there); OpenAI's ``user`` field is used when this is absent."""

    def __post_init__(self) -> None:
        # The pattern's `$` also matches before a final newline; be exact.
        for value in [*(self.metros() or ()), *([self.tier] if self.tier else [])]:
            if "\n" in value:
                raise ValueError("metro and tier names are letters, digits, `-` and `_`")

    def metros(self) -> list[str] | None:
        if self.metro is None:
            return None
        return [self.metro] if isinstance(self.metro, str) else list(self.metro)


class ModelVolt(msgspec.Struct, kw_only=True, omit_defaults=True):
    insecure: bool = False
    """Some pod serving it runs unsealed (a development node): prompts sent to
    it are not protected by the engine's network seal."""
    not_attested: bool = False
    """Some pod serving it runs on a node that proved no measured boot (no TPM)."""


class Model(msgspec.Struct, kw_only=True, omit_defaults=True):
    id: str
    created: int
    owned_by: str
    object: Literal["model"]
    """Required here (not defaulted) so that ``omit_defaults`` keeps it in the JSON."""
    volt: ModelVolt | None = None
    """Present only when something about the model needs saying (``insecure``)."""


class ModelList(msgspec.Struct, kw_only=True):
    data: list[Model]
    object: Literal["list"] = "list"


class ModelDeleted(msgspec.Struct, kw_only=True):
    """OpenAI's ``DeleteModelResponse``."""

    id: str
    deleted: bool
    object: Literal["model"]


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(msgspec.Struct, kw_only=True):
    """OpenAI's error envelope, used on every path."""

    error: ErrorDetail
