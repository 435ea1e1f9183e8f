"""Admission: a bounded, fair wait for a free pod slot, or a 429.

Each pod takes at most ``api.max_inflight_per_pod`` requests from this API
replica (the router skips full pods). When every healthy candidate is full, a
request waits in the queue of its placement query (model, metros, tier), so a
freed slot wakes only waiters that can use that pod. While anyone waits, new
arrivals queue behind them instead of taking the next free slot. Waiters are
kept per tenant and served round-robin, so a tenant that floods gets one turn
in N, not all of them: it cannot starve the others. The queue is bounded overall and per tenant; a
request that does not fit is refused at once with 429, ``Retry-After`` and
``x-ratelimit-*`` headers (OpenAI's names), never left to wait without bound,
and one that waits past its deadline gets 503.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict, deque

from prometheus_client import Gauge

from volt.control_api.errors import RateLimited, ServiceUnavailable
from volt.placement import DEFAULT_POLICY, PlacementQuery
from volt.wire import NodeView

WAITING = Gauge("volt_api_waiting_requests", "Requests waiting for a free pod slot", ["model"])


class FairQueue:
    """Waiters per tenant, woken round-robin across tenants."""

    def __init__(self, limit: int, per_tenant_limit: int) -> None:
        self.limit = limit
        self.per_tenant_limit = per_tenant_limit
        self._tenants: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def enqueue(self, tenant_id: str, *, front: bool = False) -> asyncio.Future[None]:
        """Wait in line (``front``: a waiter whose turn was taken keeps its place)."""
        waiters = self._tenants.get(tenant_id)
        if self._size >= self.limit and not front:
            raise RateLimited(
                "Volt is at capacity for this model right now; retry shortly.",
                limit=self.limit,
            )
        if waiters is not None and len(waiters) >= self.per_tenant_limit and not front:
            raise RateLimited(
                "You have too many requests waiting for this model; retry shortly.",
                limit=self.per_tenant_limit,
            )
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if waiters is None:
            waiters = self._tenants[tenant_id] = deque()
        if front:
            waiters.appendleft(future)
        else:
            waiters.append(future)
        self._size += 1
        return future

    def wake_next(self) -> bool:
        """Give the next tenant in turn its oldest waiter's turn; False if none waits."""
        while self._tenants:
            tenant_id, waiters = next(iter(self._tenants.items()))
            future = waiters.popleft()
            self._size -= 1
            if waiters:
                self._tenants.move_to_end(tenant_id)  # its next turn comes after the others
            else:
                del self._tenants[tenant_id]
            if not future.done():
                future.set_result(None)
                return True
        return False

    def remove(self, tenant_id: str, future: asyncio.Future[None]) -> None:
        waiters = self._tenants.get(tenant_id)
        if waiters is not None and future in waiters:
            waiters.remove(future)
            self._size -= 1
            if not waiters:
                del self._tenants[tenant_id]


class Admission:
    def __init__(self, *, queue_limit: int, per_tenant_limit: int) -> None:
        self.queue_limit = queue_limit
        self.per_tenant_limit = per_tenant_limit
        self._queues: dict[PlacementQuery, FairQueue] = {}

    def waiting(self, query: PlacementQuery) -> int:
        queue = self._queues.get(query)
        return len(queue) if queue is not None else 0

    def _report(self, model: str) -> None:
        WAITING.labels(model).set(
            sum(len(q) for query, q in self._queues.items() if query.model == model)
        )

    async def wait_turn(self, query: PlacementQuery, tenant_id: str, deadline: float, *,
                        front: bool = False) -> None:
        """Wait (fairly) until a slot frees for ``query``; ``deadline`` is loop time."""
        queue = self._queues.get(query)
        if queue is None:
            queue = self._queues[query] = FairQueue(self.queue_limit, self.per_tenant_limit)
        future = queue.enqueue(tenant_id, front=front)
        self._report(query.model)
        try:
            async with asyncio.timeout_at(deadline):
                await future
        except BaseException as exc:
            queue.remove(tenant_id, future)
            if future.done() and not future.cancelled():
                queue.wake_next()  # our turn came, but we will not use it: pass it on
            if isinstance(exc, TimeoutError):
                raise ServiceUnavailable(
                    "No pod freed up for this request before its deadline; retry shortly."
                ) from None
            raise
        finally:
            if not queue:
                self._queues.pop(query, None)
            self._report(query.model)

    def released(self, node: NodeView) -> None:
        """A slot freed on ``node``: the next waiter in turn that can use it may go."""
        for query, queue in list(self._queues.items()):
            if fits(query, node):
                queue.wake_next()


def fits(query: PlacementQuery, node: NodeView) -> bool:
    """Placement's own filters (not a copy of them): could ``node`` serve ``query``?"""
    return all(plugin.keep(query, node) for plugin in DEFAULT_POLICY.filters)
