"""Routing from the view the scheduler publishes.

The API does not ask the scheduler per request. The scheduler publishes its
placement view (nodes, their state and load, the model catalog) on
``volt.sched.view`` whenever it changes and every second otherwise; each API
replica keeps the latest copy and places requests locally with the same
policy the scheduler uses. That takes a NATS round trip and the scheduler
itself off every request's path (``volt bench placement`` measures both), at
the price of a view up to one publish old, which the replica corrects with
its own in-flight counts and by moving on when a node does not answer.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable

from nats.aio.client import Client
from nats.aio.msg import Msg

from volt.control_api.errors import ModelNotFound, ServiceUnavailable
from volt.placement import (
    DEFAULT_POLICY,
    LocalLoad,
    PlacementQuery,
    Policy,
)
from volt.scheduler.node_states import PLACEABLE
from volt.wire import SCHEDULER, ModelCard, NodeView, PlacementView, ViewQuery, encode, subjects

log = logging.getLogger(__name__)
_PLACEABLE = frozenset(state.value for state in PLACEABLE)


class AtCapacity(Exception):
    """Healthy pods can serve the request, but every one is at its in-flight limit."""


class Router:
    def __init__(self, policy: Policy = DEFAULT_POLICY, *,
                 max_inflight_per_pod: int | None = None, replica_id: str = "") -> None:
        self.policy = policy
        self.replica_id = replica_id
        self.max_inflight_per_pod = max_inflight_per_pod
        self.nodes: list[NodeView] = []
        # Placeable nodes by (model, metro), rebuilt per view, so a request only
        # looks at its candidates; the policy still checks every filter.
        self._candidates: dict[tuple[str, str], list[NodeView]] = {}
        self._by_model: dict[str, list[NodeView]] = {}
        self.catalog: dict[str, ModelCard] = {}
        self.metros: set[str] = set()
        """Every metro and tier the fleet serves, with a node up or not: a pin to
        anything else can never be served."""
        self.tiers: set[str] = set()
        self.inflight: dict[str, int] = {}
        self._local: dict[str, LocalLoad] = {}
        self._idle = LocalLoad(replica_id=replica_id)
        self.view_received_at: float | None = None
        self.on_pods_lost: Callable[[set[str]], None] | None = None
        """Called with the nodes that stopped being placeable (failover of their requests)."""
        self._nc: Client | None = None

    @property
    def has_view(self) -> bool:
        return self.view_received_at is not None

    def apply(self, view: PlacementView) -> None:
        candidates: dict[tuple[str, str], list[NodeView]] = {}
        by_model: dict[str, list[NodeView]] = {}
        for node in view.nodes:
            if node.state not in _PLACEABLE:
                continue
            for model in node.models:
                candidates.setdefault((model, node.metro), []).append(node)
                by_model.setdefault(model, []).append(node)
        placeable_before = {n.node_id for nodes in self._by_model.values() for n in nodes}
        placeable_now = {n.node_id for nodes in by_model.values() for n in nodes}
        self.nodes = view.nodes
        self._candidates, self._by_model = candidates, by_model
        self.metros = {node.metro for node in view.nodes}.union(view.metros)
        self.tiers = {node.tier for node in view.nodes}.union(view.tiers)

        self.catalog = {card.id: card for card in view.models}
        self.view_received_at = time.monotonic()
        lost = placeable_before - placeable_now
        if lost and self.on_pods_lost is not None:
            self.on_pods_lost(lost)

    def forget_models(self, model_ids: list[str]) -> None:
        """Models this replica just deleted: gone here at once, before the
        scheduler's next view says so (which replaces the whole catalog)."""
        for model_id in model_ids:
            self.catalog.pop(model_id, None)

    def model(self, model_id: str) -> ModelCard:
        card = self.catalog.get(model_id)
        if card is None:
            raise ModelNotFound(model_id)
        return card

    def with_adapter(self, model: str) -> list[str]:
        """The nodes that have tuned model ``model``'s adapter loaded."""
        return [node.node_id for node in self.nodes if model in node.adapters]

    def place(self, query: PlacementQuery, exclude: Iterable[str] = ()) -> NodeView:
        if query.metros is None:
            nodes = self._by_model.get(query.model, [])
        else:
            nodes = [n for metro in query.metros
                     for n in self._candidates.get((query.model, metro), ())]
        excluded = set(exclude)
        if excluded:
            nodes = [n for n in nodes if n.node_id not in excluded]
        limit = self.max_inflight_per_pod
        if limit is not None and nodes:
            inflight = self.inflight
            free = [n for n in nodes if inflight.get(n.node_id, 0) < limit]
            if not free and self.policy.place(query, nodes).node is not None:
                raise AtCapacity(query.model)
            nodes = free
        decision = self.policy.place(query, nodes, self._local, default=self._idle)
        if decision.node is None:
            where = f" in {', '.join(sorted(query.metros))}" if query.metros else ""
            raise ServiceUnavailable(
                f"No healthy pod is serving `{query.model}`{where} right now; retry shortly."
            )
        return decision.node

    def started(self, node_id: str) -> None:
        count = self.inflight[node_id] = self.inflight.get(node_id, 0) + 1
        self._local[node_id] = LocalLoad(inflight=count, replica_id=self.replica_id)

    def finished(self, node_id: str) -> None:
        left = self.inflight.get(node_id, 1) - 1
        if left > 0:
            self.inflight[node_id] = left
        else:
            self.inflight.pop(node_id, None)
        self._local[node_id] = LocalLoad(inflight=left, replica_id=self.replica_id)

    # -- keeping the view current ---------------------------------------------

    async def attach(self, nc: Client) -> None:
        self._nc = nc
        await nc.subscribe(subjects.SCHED_VIEW, cb=self._on_view)
        await self.refresh()

    async def refresh(self) -> None:
        """Ask the scheduler for the whole view (at start and after a reconnect)."""
        if self._nc is None:
            return
        with contextlib.suppress(Exception):
            reply = await self._nc.request(subjects.SCHED_VIEW_GET, encode(ViewQuery()), timeout=2)
            await self._on_view(reply)

    async def _on_view(self, msg: Msg) -> None:
        view = SCHEDULER.decode_or_drop(msg.data)
        if isinstance(view, PlacementView):
            self.apply(view)
