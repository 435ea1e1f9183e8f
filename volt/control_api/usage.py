"""Serving ``GET /v1/usage``: what a tenant used, from the metering ledger.

Query parameters: ``start`` and ``end`` (Unix seconds, or a UTC date
``YYYY-MM-DD``; default: the last 30 days), ``group_by`` (comma-separated:
``model``, ``day``, ``metro``, ``tier``, ``key``). Completed and cancelled
requests count (a cancelled request's tokens were generated); attempts that
failed on a pod before the client got anything do not. Forge leases add
their GPU-seconds (GPUs times the seconds each was active in the window);
fine-tuning jobs that ended in the window, their trained tokens (tokens times
epochs).
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping, Sequence
from typing import cast

import msgspec

from volt.control_api.errors import InvalidRequest
from volt.identity import Principal
from volt.protocol.usage import FineTuningUsage, LeaseUsage, UsageEntry, UsageReport
from volt.store import UsageLedger
from volt.store.resources import ResourceRecord, ResourceStore
from volt.store.usage import GROUPS, GroupBy

_encoder = msgspec.json.Encoder()
DEFAULT_WINDOW_S = 30 * 24 * 3600


def _instant(name: str, value: str) -> int:
    if value.isdigit():
        return int(value)
    try:
        return calendar.timegm(time.strptime(value, "%Y-%m-%d"))
    except ValueError:
        raise InvalidRequest(
            f"`{name}` must be Unix seconds or a date like 2026-11-26, not {value!r}.",
            param=name,
        ) from None


def parse_query(args: Mapping[str, str], now: float) -> tuple[int, int, list[GroupBy]]:
    end = _instant("end", args["end"]) if args.get("end") else int(now) + 1
    start = _instant("start", args["start"]) if args.get("start") else end - DEFAULT_WINDOW_S
    if start >= end:
        raise InvalidRequest("`start` must be before `end`.", param="start")
    group_by: list[GroupBy] = []
    for name in filter(None, (part.strip() for part in args.get("group_by", "").split(","))):
        if name not in GROUPS:
            raise InvalidRequest(
                f"Cannot group by {name!r}; choose from {', '.join(GROUPS)}.", param="group_by"
            )
        if name not in group_by:
            group_by.append(cast(GroupBy, name))
    return start, end, group_by


def gpu_seconds(record: ResourceRecord, start: float, end: float, now: float) -> int:
    """A lease's GPUs times the seconds it was active inside [start, end)."""
    active_at = record.status.get("active_at")
    if active_at is None:
        return 0
    ended = record.status.get("ended_at") or now
    seconds = max(0.0, min(ended, end) - max(active_at, start))
    return int(seconds * int(record.spec["gpu_count"]))


def lease_usage(records: Sequence[ResourceRecord], start: float, end: float,
                now: float) -> list[LeaseUsage]:
    """GPU-seconds per lease that was active inside [start, end)."""
    out = []
    for record in records:
        used = gpu_seconds(record, start, end, now)
        if used > 0:
            out.append(LeaseUsage(
                lease_id=record.id, gpu_model=record.spec["gpu_model"],
                gpu_count=int(record.spec["gpu_count"]), metro=record.spec["metro"],
                tier=record.spec["tier"], gpu_seconds=used))
    return out


def fine_tuning_usage(records: Sequence[ResourceRecord], start: float,
                      end: float) -> list[FineTuningUsage]:
    out = []
    for record in records:
        finished = record.status.get("finished_at")
        tokens = int(record.status.get("trained_tokens", 0))
        if finished is not None and start <= finished < end and tokens > 0:
            out.append(FineTuningUsage(
                job_id=record.id, model=record.spec["model"], metro=record.spec["metro"],
                status=record.state, n_epochs=int(record.spec["hyperparameters"]["n_epochs"]),
                trained_tokens=tokens))
    return out


async def usage_report(ledger: UsageLedger, leases: ResourceStore, principal: Principal,
                       args: Mapping[str, str]) -> bytes:
    now = time.time()
    start, end, group_by = parse_query(args, now)
    buckets = await ledger.summary(principal.org_id, start_unix=start, end_unix=end,
                                   group_by=group_by, livemode=principal.mode == "live")
    forge = lease_usage(await leases.created_before("lease", principal.org_id, end),
                        start, end, now) if principal.mode == "live" else []
    tuning = fine_tuning_usage(
        await leases.created_before("fine_tuning_job", principal.org_id, end), start, end)
    return _encoder.encode(UsageReport(
        fine_tuning=tuning,
        fine_tuning_trained_tokens=sum(job.trained_tokens for job in tuning),
        forge=forge, forge_gpu_seconds=sum(lease.gpu_seconds for lease in forge),
        start=start, end=end, group_by=group_by,
        data=[
            UsageEntry(
                requests=b.requests, prompt_tokens=b.prompt_tokens,
                completion_tokens=b.completion_tokens, cached_tokens=b.cached_tokens,
                total_tokens=b.prompt_tokens + b.completion_tokens, **b.group,
            )
            for b in buckets
        ],
    ))
