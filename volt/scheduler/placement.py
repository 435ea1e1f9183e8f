"""Placement as filter → score → pick, each step a small named plugin.

A policy is a list you can read::

    DEFAULT_POLICY = Policy(
        filters=(serves_model, in_metro, in_tier, healthy),
        scorers=(least_load,),
    )

Every filter returns ``None`` (keep) or the reason it rejected a node, so
"why was this node not chosen?" always has an answer (``Decision.rejected``).
Scorers return a value in [0, 1], weighted and summed; the highest total wins
and ties are broken at random so equal nodes share the work.

The API routes every request with this module from the view the scheduler
publishes; the scheduler uses the same policy to answer ``volt.sched.place``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from volt.scheduler.node_states import PLACEABLE, NodeState
from volt.wire import NodeView


@dataclass(frozen=True, slots=True)
class PlacementQuery:
    model: str
    metros: frozenset[str] | None = None
    """Serve only in these metros (None: anywhere the tenant may use)."""
    tier: str | None = None


@dataclass(frozen=True, slots=True)
class Filter:
    name: str
    check: Callable[[PlacementQuery, NodeView], str | None]


@dataclass(frozen=True, slots=True)
class Scorer:
    name: str
    weight: float
    score: Callable[[PlacementQuery, NodeView, int], float]
    """(query, node, requests this router has in flight on the node) -> [0, 1]."""


@dataclass(slots=True)
class Decision:
    node: NodeView | None
    rejected: dict[str, str] = field(default_factory=dict)
    scores: dict[str, float] = field(default_factory=dict)


def _serves_model(query: PlacementQuery, node: NodeView) -> str | None:
    return None if query.model in node.models else f"does not serve {query.model}"


def _in_metro(query: PlacementQuery, node: NodeView) -> str | None:
    if query.metros is None or node.metro in query.metros:
        return None
    return f"metro {node.metro} not in {sorted(query.metros)}"


def _in_tier(query: PlacementQuery, node: NodeView) -> str | None:
    return None if query.tier is None or node.tier == query.tier else f"tier {node.tier}"


_PLACEABLE_VALUES = frozenset(state.value for state in PLACEABLE)


def _healthy(query: PlacementQuery, node: NodeView) -> str | None:
    return None if node.state in _PLACEABLE_VALUES else f"state {node.state}"


def _least_load(query: PlacementQuery, node: NodeView, local_inflight: int) -> float:
    # The view's load lags by up to a heartbeat; this router's own in-flight
    # count is current. With one router the larger of the two is the truth;
    # with several it is a lower bound, and the random tie-break spreads the rest.
    queued = max(node.load.running + node.load.waiting, local_inflight)
    return (1.0 / (1.0 + queued)) * (1.0 - 0.5 * node.load.kv_cache_usage)


serves_model = Filter("serves_model", _serves_model)
in_metro = Filter("in_metro", _in_metro)
in_tier = Filter("in_tier", _in_tier)
healthy = Filter("healthy", _healthy)
least_load = Scorer("least_load", 1.0, _least_load)


@dataclass(frozen=True, slots=True)
class Policy:
    filters: tuple[Filter, ...]
    scorers: tuple[Scorer, ...]

    def place(
        self,
        query: PlacementQuery,
        nodes: Sequence[NodeView],
        inflight: Mapping[str, int] | None = None,
        rng: random.Random | None = None,
    ) -> Decision:
        decision = Decision(node=None)
        inflight = inflight or {}
        best: list[NodeView] = []
        best_score = -1.0
        for node in nodes:
            reason = None
            for plugin in self.filters:
                reason = plugin.check(query, node)
                if reason is not None:
                    decision.rejected[node.node_id] = f"{plugin.name}: {reason}"
                    break
            if reason is not None:
                continue
            local = inflight.get(node.node_id, 0)
            total = sum(s.weight * s.score(query, node, local) for s in self.scorers)
            decision.scores[node.node_id] = total
            if total > best_score:
                best, best_score = [node], total
            elif total == best_score:
                best.append(node)
        if best:
            decision.node = best[0] if len(best) == 1 else (rng or random).choice(best)
        return decision


DEFAULT_POLICY = Policy(filters=(serves_model, in_metro, in_tier, healthy), scorers=(least_load,))

__all__ = [
    "DEFAULT_POLICY",
    "Decision",
    "Filter",
    "NodeState",
    "PlacementQuery",
    "Policy",
    "Scorer",
    "healthy",
    "in_metro",
    "in_tier",
    "least_load",
    "serves_model",
]
