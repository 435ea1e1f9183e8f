"""The fair queue and admission, on their own (the end-to-end test floods a real pod)."""

from __future__ import annotations

import asyncio

import pytest

from volt.control_api.admission import Admission, FairQueue
from volt.control_api.errors import RateLimited, ServiceUnavailable
from volt.placement import PlacementQuery
from volt.wire import NodeView

QUERY = PlacementQuery(model="m")


def node(metro: str = "fra") -> NodeView:
    return NodeView(node_id="n", metro=metro, tier="standard", models=["m"], state="ready")


async def test_tenants_take_turns_whoever_queued_first() -> None:
    queue = FairQueue(limit=100, per_tenant_limit=100)
    served: list[str] = []
    futures = [(t, queue.enqueue(t)) for t in ["a"] * 5 + ["b", "b", "c"]]
    for tenant, future in futures:
        future.add_done_callback(lambda _, t=tenant: served.append(t))
    while queue.wake_next():
        await asyncio.sleep(0)
    assert served == ["a", "b", "c", "a", "b", "a", "a", "a"]


async def test_bounds_give_429_with_rate_limit_headers() -> None:
    queue = FairQueue(limit=3, per_tenant_limit=2)
    queue.enqueue("a")
    queue.enqueue("a")
    with pytest.raises(RateLimited) as per_tenant:
        queue.enqueue("a")  # a flooder hits its own bound...
    queue.enqueue("b")  # ...while others still get in line
    with pytest.raises(RateLimited) as overall:
        queue.enqueue("c")
    for error in (per_tenant.value, overall.value):
        assert error.status == 429
        headers = error.headers()
        assert int(headers["Retry-After"]) >= 1
        assert headers["x-ratelimit-remaining-requests"] == "0"
        assert {"x-ratelimit-limit-requests", "x-ratelimit-reset-requests"} <= set(headers)


async def test_a_waiter_past_its_deadline_gets_503_and_leaves_the_line() -> None:
    admission = Admission(queue_limit=10, per_tenant_limit=10)
    loop = asyncio.get_running_loop()
    with pytest.raises(ServiceUnavailable):
        await admission.wait_turn(QUERY, "a", loop.time() + 0.05)
    assert admission.waiting(QUERY) == 0


async def test_a_turn_given_to_a_cancelled_waiter_passes_on() -> None:
    admission = Admission(queue_limit=10, per_tenant_limit=10)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(admission.wait_turn(QUERY, "a", loop.time() + 5))
    second = asyncio.create_task(admission.wait_turn(QUERY, "b", loop.time() + 5))
    await asyncio.sleep(0)
    admission.released(node())  # first's turn...
    first.cancel()  # ...but its client leaves before it runs
    await asyncio.gather(first, return_exceptions=True)
    await asyncio.wait_for(second, 1)  # the turn went to the next in line


async def test_a_slot_wakes_only_waiters_that_can_use_that_pod() -> None:
    admission = Admission(queue_limit=10, per_tenant_limit=10)
    loop = asyncio.get_running_loop()
    in_ams = PlacementQuery(model="m", metros=frozenset({"ams"}))
    waiter = asyncio.create_task(admission.wait_turn(in_ams, "a", loop.time() + 5))
    await asyncio.sleep(0)
    admission.released(node("fra"))
    await asyncio.sleep(0.01)
    assert not waiter.done()
    admission.released(node("ams"))
    await asyncio.wait_for(waiter, 1)
