"""Serving ``GET /v1/usage``: what a tenant used, from the metering ledger.

Query parameters: ``start`` and ``end`` (Unix seconds, or a UTC date
``YYYY-MM-DD``; default: the last 30 days), ``group_by`` (comma-separated:
``model``, ``day``, ``metro``, ``tier``, ``key``). Completed and cancelled
requests count (a cancelled request's tokens were generated); attempts that
failed on a pod before the client got anything do not.
"""

from __future__ import annotations

import calendar
import time
from collections.abc import Mapping
from typing import cast

import msgspec

from volt.control_api.errors import InvalidRequest
from volt.identity import Principal
from volt.protocol.usage import UsageEntry, UsageReport
from volt.store import UsageLedger
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


async def usage_report(ledger: UsageLedger, principal: Principal,
                       args: Mapping[str, str]) -> bytes:
    start, end, group_by = parse_query(args, time.time())
    buckets = await ledger.summary(principal.org_id, start_unix=start, end_unix=end,
                                   group_by=group_by, livemode=principal.mode == "live")
    return _encoder.encode(UsageReport(
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
