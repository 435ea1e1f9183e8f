"""Placement as filter → score → pick, each step a small named plugin.

A policy is a list you can read::

    DEFAULT_POLICY = Policy(
        filters=(serves_model, in_metro, in_tier, on_capacity, healthy, not_leased),
        scorers=(least_load,),
    )

Every filter says keep or not, and can say why not, so "why was this node
not chosen?" always has an answer (``place(..., explain=True)`` fills
``Decision.rejected``; the hot path skips building the reasons).
Scorers return a value in [0, 1], weighted and summed; the highest total wins
and ties are broken at random so equal nodes share the work.

The API routes every request with this module from the view the scheduler
publishes; the scheduler uses the same policy to answer ``volt.sched.place``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from volt.scheduler.node_states import PLACEABLE
from volt.wire import NodeView


@dataclass(frozen=True, slots=True)
class PlacementQuery:
    model: str
    metros: frozenset[str] | None = None
    """Serve only in these metros (None: anywhere)."""
    tier: str | None = None
    """The tier the request asked for (None: any)."""
    tiers: frozenset[str] | None = None
    """The tiers the tenant may use (None: any)."""
    livemode: bool = True
    """False for a test key: only test capacity serves it."""
    affinity: Mapping[str, float] = field(default_factory=dict, compare=False, hash=False)
    """Node id -> how much of this request's context it probably holds, 0 to 1
    (prompt prefix, session); not part of the query's identity."""


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    keep: Callable[[PlacementQuery, NodeView], bool]
    reason: Callable[[PlacementQuery, NodeView], str]
    """Why ``keep`` said no; only built when a decision is asked to explain itself."""


@dataclass(frozen=True, slots=True)
class LocalLoad:
    """What this router itself knows about a node, fresher than the view's load."""

    inflight: int = 0
    """Its requests on the node now."""
    replica_id: str = ""
    """Its id, to find its own share in the node's ``inflight_by_replica``."""


NO_LOCAL_LOAD = LocalLoad()


@dataclass(frozen=True, slots=True)
class Scorer:
    name: str
    weight: float
    score: Callable[[PlacementQuery, NodeView, LocalLoad], float]
    """(query, node, this router's own load on it) -> [0, 1]."""


@dataclass(slots=True)
class Decision:
    node: NodeView | None
    rejected: dict[str, str] = field(default_factory=dict)
    """Node id -> "filter: reason", when the decision was asked to explain."""
    scores: dict[str, float] = field(default_factory=dict)


_PLACEABLE_VALUES = frozenset(state.value for state in PLACEABLE)

serves_model = Filter(
    "serves_model",
    lambda q, n: q.model in n.models,
    lambda q, n: f"does not serve {q.model}",
)
in_metro = Filter(
    "in_metro",
    lambda q, n: q.metros is None or n.metro in q.metros,
    lambda q, n: f"metro {n.metro} not in {sorted(q.metros or ())}",
)
in_tier = Filter(
    "in_tier",
    lambda q, n: (q.tier is None or n.tier == q.tier) and (q.tiers is None or n.tier in q.tiers),
    lambda q, n: f"tier {n.tier}",
)
on_capacity = Filter(
    "on_capacity",
    lambda q, n: (n.capacity == "live") == q.livemode,
    lambda q, n: f"{n.capacity} capacity, the request is {'live' if q.livemode else 'test'}",
)
healthy = Filter(
    "healthy",
    lambda q, n: n.state in _PLACEABLE_VALUES,
    lambda q, n: f"state {n.state}" + (f" ({'; '.join(n.problems)})" if n.problems else ""),
)

not_leased = Filter(
    "not_leased",
    lambda q, n: not n.lease_id,
    lambda q, n: f"given to Forge lease {n.lease_id}",
)


def _least_load(query: PlacementQuery, node: NodeView, local: LocalLoad) -> float:
    # The view is up to a heartbeat old. The other replicas' share of a node's
    # requests is the best there is; this router's own share is known exactly,
    # now. The shares come from the agent's own count, one snapshot: the
    # engine's running/waiting metrics are read over HTTP at another instant,
    # and the gap left phantom "busy" nodes that drew short requests elsewhere
    # for a whole heartbeat.
    by_replica = node.inflight_by_replica
    others = sum(by_replica.values()) - by_replica.get(local.replica_id, 0)
    queued = others + local.inflight
    # KV-cache use only counts once it is pressure: below half, engines hold
    # reusable prefix blocks that say nothing about capacity, and letting small
    # differences decide would send every tie to the same node.
    pressure = max(0.0, node.load.kv_cache_usage - 0.5)
    return (1.0 / (1.0 + queued)) * (1.0 - pressure)


least_load = Scorer("least_load", 1.0, _least_load)


def _prefix_affinity(query: PlacementQuery, node: NodeView, local: LocalLoad) -> float:
    # Scaled by the node's own load score, so with the weight below a node's
    # total is load * (1 + 3 * match): holding the whole context is worth
    # about three queued requests, and past that the work spills over (llm-d
    # weighs its prefix-cache and load scorers against each other the same way).
    match = query.affinity.get(node.node_id, 0.0)
    return match * _least_load(query, node, local) if match else 0.0


prefix_affinity = Scorer("prefix_affinity", 3.0, _prefix_affinity)


class Rotation:
    """Break ties in turn rather than at random: round-robin routing, for a
    policy with no scorers (every kept node ties)."""

    def __init__(self) -> None:
        self._turn = 0

    def __call__(self, tied: Sequence[NodeView], rng: random.Random | None) -> NodeView:
        ordered = sorted(tied, key=lambda n: n.node_id)
        self._turn += 1
        return ordered[self._turn % len(ordered)]


def _at_random(tied: Sequence[NodeView], rng: random.Random | None) -> NodeView:
    return (rng or random).choice(tied)


@dataclass(frozen=True, slots=True)
class Policy:
    filters: tuple[Filter, ...]
    scorers: tuple[Scorer, ...]
    tie_break: Callable[[Sequence[NodeView], random.Random | None], NodeView] = _at_random
    """Which of the nodes with the best total wins (at random: equal nodes share)."""

    def place(
        self,
        query: PlacementQuery,
        nodes: Sequence[NodeView],
        local: Mapping[str, LocalLoad] | None = None,
        rng: random.Random | None = None,
        *,
        explain: bool = False,
        default: LocalLoad = NO_LOCAL_LOAD,
    ) -> Decision:
        decision = Decision(node=None)
        local = local or {}
        filters, scorers = self.filters, self.scorers
        best: list[NodeView] = []
        best_score = -1.0
        # Plain loops: this runs for every candidate of every request.
        for node in nodes:
            for plugin in filters:
                if not plugin.keep(query, node):
                    if explain:
                        decision.rejected[node.node_id] = (
                            f"{plugin.name}: {plugin.reason(query, node)}"
                        )
                    break
            else:
                mine = local.get(node.node_id, default)
                total = 0.0
                for scorer in scorers:
                    total += scorer.weight * scorer.score(query, node, mine)
                decision.scores[node.node_id] = total
                if total > best_score:
                    best, best_score = [node], total
                elif total == best_score:
                    best.append(node)
                continue
        if best:
            decision.node = best[0] if len(best) == 1 else self.tie_break(best, rng)
        return decision


FILTERS = (serves_model, in_metro, in_tier, on_capacity, healthy, not_leased)
DEFAULT_POLICY = Policy(filters=FILTERS, scorers=(least_load, prefix_affinity))


def _prefix_only(query: PlacementQuery, node: NodeView, local: LocalLoad) -> float:
    return query.affinity.get(node.node_id, 0.0)


ROUTING: dict[str, Callable[[], Policy]] = {
    "prefix_aware": lambda: DEFAULT_POLICY,
    "least_load": lambda: Policy(filters=FILTERS, scorers=(least_load,)),
    # Baselines for ``volt bench prefix``: the context alone (load only breaks
    # ties), turns, and chance.
    "prefix_only": lambda: Policy(filters=FILTERS, scorers=(
        Scorer("prefix_only", 1000.0, _prefix_only), least_load)),
    "round_robin": lambda: Policy(filters=FILTERS, scorers=(), tie_break=Rotation()),
    "random": lambda: Policy(filters=FILTERS, scorers=()),
}
"""The routing policies ``api.routing`` names; each call makes a fresh one
(round-robin keeps its turn per router)."""


def routing_policy(name: str) -> Policy:
    return ROUTING[name]()


__all__ = [
    "DEFAULT_POLICY",
    "ROUTING",
    "Decision",
    "Filter",
    "LocalLoad",
    "PlacementQuery",
    "Policy",
    "Scorer",
    "healthy",
    "in_metro",
    "in_tier",
    "least_load",
    "not_leased",
    "on_capacity",
    "prefix_affinity",
    "routing_policy",
    "serves_model",
]
