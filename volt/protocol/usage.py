"""``GET /v1/usage``: a tenant's token usage, filtered by time and grouped."""

from __future__ import annotations

from typing import Literal

import msgspec


class UsageEntry(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One group's totals; the grouping fields appear only when grouped by them."""

    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    total_tokens: int
    model: str | None = None
    day: str | None = None
    """UTC date, YYYY-MM-DD."""
    metro: str | None = None
    tier: str | None = None
    key: str | None = None
    """API key id (``key_...``)."""


class LeaseUsage(msgspec.Struct, kw_only=True):
    """One Forge lease's GPU time inside the report's window."""

    lease_id: str
    gpu_model: str
    gpu_count: int
    metro: str
    tier: str | None
    gpu_seconds: int
    """GPUs times the seconds it was active inside [start, end)."""


class FineTuningUsage(msgspec.Struct, kw_only=True):
    """One fine-tuning job that ended inside the report's window."""

    job_id: str
    model: str
    """The base model it tuned."""
    metro: str
    status: str
    n_epochs: int
    trained_tokens: int
    """Tokens trained on, every epoch counted (a file's tokens times its epochs;
    a job cancelled or failed part-way: what it trained before it stopped)."""


class UsageReport(msgspec.Struct, kw_only=True):
    start: int
    """Unix seconds, inclusive."""
    end: int
    """Unix seconds, exclusive."""
    group_by: list[Literal["model", "day", "metro", "tier", "key"]]
    data: list[UsageEntry]
    object: Literal["usage"] = "usage"
    forge: list[LeaseUsage] = []
    """GPU-seconds per Forge lease (none for test keys, which cannot lease)."""
    forge_gpu_seconds: int = 0
    fine_tuning: list[FineTuningUsage] = []
    fine_tuning_trained_tokens: int = 0
