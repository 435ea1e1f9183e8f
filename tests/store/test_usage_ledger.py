"""The usage ledger on SQLite and PostgreSQL: exactly-once storage, grouped sums."""

from __future__ import annotations

import calendar
import time

import pytest

from volt.store import Database, UsageLedger
from volt.wire import UsageRecord

DAY1 = calendar.timegm(time.strptime("2026-11-25", "%Y-%m-%d"))
DAY2 = DAY1 + 86400


@pytest.fixture
def ledger(db: Database) -> UsageLedger:
    return UsageLedger(db)


def record(request_id: str, *, tenant: str = "ten_a", model: str = "m1", ended: float = DAY1 + 10,
           status: str = "completed", prompt: int = 10, completion: int = 5,
           key: str = "key_1", metro: str = "fra") -> UsageRecord:
    return UsageRecord(
        request_id=request_id, tenant_id=tenant, key_id=key, model=model,
        endpoint="chat.completions", metro=metro, tier="standard", pod="fra-1", stream=False,
        status=status, prompt_tokens=prompt, completion_tokens=completion, cached_tokens=1,
        started_unix=ended - 1, ended_unix=ended,
    )


async def test_a_record_delivered_twice_counts_once(ledger: UsageLedger) -> None:
    batch = [record("r1"), record("r2")]
    await ledger.record(batch)
    await ledger.record(batch)  # redelivery after a crash before the ack
    await ledger.record([record("r2"), record("r3")])
    [total] = await ledger.summary("ten_a", start_unix=0, end_unix=DAY2 * 2)
    assert (total.requests, total.prompt_tokens, total.completion_tokens) == (3, 30, 15)


async def test_grouping_filters_and_what_is_billed(ledger: UsageLedger) -> None:
    await ledger.record([
        record("a", model="m1", ended=DAY1 + 5),
        record("b", model="m2", ended=DAY1 + 6, completion=7),
        record("c", model="m1", ended=DAY2 + 5, status="cancelled", completion=2),
        record("d", model="m1", ended=DAY2 + 6, status="failed", completion=99),  # not billed
        record("e", tenant="ten_other", ended=DAY1 + 7),  # someone else's
    ])
    by_model_day = await ledger.summary("ten_a", start_unix=0, end_unix=DAY2 * 2,
                                        group_by=["model", "day"])
    assert [(b.group, b.requests, b.completion_tokens) for b in by_model_day] == [
        ({"model": "m1", "day": "2026-11-25"}, 1, 5),
        ({"model": "m1", "day": "2026-11-26"}, 1, 2),
        ({"model": "m2", "day": "2026-11-25"}, 1, 7),
    ]
    first_day = await ledger.summary("ten_a", start_unix=DAY1, end_unix=DAY2)
    assert [(b.requests, b.completion_tokens, b.cached_tokens) for b in first_day] == [(2, 12, 2)]
    assert await ledger.summary("ten_nobody", start_unix=0, end_unix=DAY2 * 2) == []
