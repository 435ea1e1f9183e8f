from __future__ import annotations

import random
from collections import Counter

from volt.placement import DEFAULT_POLICY, LocalLoad, PlacementQuery
from volt.wire import EngineLoad, NodeView


def node(node_id: str, *, metro: str = "fra", tier: str = "standard", state: str = "ready",
         models: tuple[str, ...] = ("m",), running: int = 0, kv: float = 0.0) -> NodeView:
    """A node with ``running`` requests from other API replicas."""
    return NodeView(node_id=node_id, metro=metro, tier=tier, models=list(models), state=state,
                    load=EngineLoad(running=running, kv_cache_usage=kv),
                    inflight_by_replica={"another-api": running} if running else {})


def test_every_rejection_has_a_named_reason() -> None:
    nodes = [
        node("wrong-model", models=("other",)),
        node("wrong-metro", metro="ams"),
        node("wrong-tier", tier="premium"),
        node("lost", state="lost"),
        node("good"),
    ]
    decision = DEFAULT_POLICY.place(
        PlacementQuery(model="m", metros=frozenset({"fra"}), tier="standard"), nodes,
        explain=True,
    )
    assert decision.node is not None
    assert decision.node.node_id == "good"
    assert decision.rejected == {
        "wrong-model": "serves_model: does not serve m",
        "wrong-metro": "in_metro: metro ams not in ['fra']",
        "wrong-tier": "in_tier: tier premium",
        "lost": "healthy: state lost",
    }


def test_no_candidate_means_no_node() -> None:
    decision = DEFAULT_POLICY.place(PlacementQuery(model="m", metros=frozenset({"sin"})),
                                    [node("a"), node("b")], explain=True)
    assert decision.node is None
    assert set(decision.rejected) == {"a", "b"}


def test_least_load_wins_counting_this_routers_inflight() -> None:
    nodes = [node("busy", running=8), node("idle", running=1)]
    query = PlacementQuery(model="m")
    assert DEFAULT_POLICY.place(query, nodes).node.node_id == "idle"  # type: ignore[union-attr]
    # The view says idle has 1 running, but this router already sent it 20.
    picked = DEFAULT_POLICY.place(query, nodes, {"idle": LocalLoad(inflight=20)}).node
    assert picked is not None
    assert picked.node_id == "busy"


def test_kv_cache_pressure_breaks_equal_load() -> None:
    nodes = [node("full", kv=0.9), node("empty", kv=0.1)]
    assert DEFAULT_POLICY.place(PlacementQuery(model="m"), nodes).node.node_id == "empty"  # type: ignore[union-attr]


def test_light_cache_use_does_not_decide_ties() -> None:
    """Reusable prefix blocks are not pressure: equal nodes still share the work."""
    nodes = [node("a", kv=0.05), node("b", kv=0.2)]
    rng = random.Random(3)
    picks = Counter(
        DEFAULT_POLICY.place(PlacementQuery(model="m"), nodes, rng=rng).node.node_id  # type: ignore[union-attr]
        for _ in range(200)
    )
    assert min(picks.values()) > 60


def test_equal_nodes_share_the_work() -> None:
    nodes = [node("a"), node("b"), node("c")]
    rng = random.Random(7)
    picks = Counter(
        DEFAULT_POLICY.place(PlacementQuery(model="m"), nodes, rng=rng).node.node_id  # type: ignore[union-attr]
        for _ in range(300)
    )
    assert set(picks) == {"a", "b", "c"}
    assert min(picks.values()) > 60


def test_a_routers_own_share_of_the_reported_load_is_replaced_by_its_live_count() -> None:
    """A heartbeat that caught a node busy with this router's (now finished)
    request must not send everything elsewhere; other routers' load still counts."""
    query = PlacementQuery(model="m")
    mine_finished = NodeView(node_id="a", metro="fra", tier="standard", models=["m"],
                             state="ready", load=EngineLoad(running=1),
                             inflight_by_replica={"api-1": 1})
    others_busy = NodeView(node_id="b", metro="fra", tier="standard", models=["m"],
                           state="ready", load=EngineLoad(running=0),  # metrics may lag
                           inflight_by_replica={"api-2": 1})
    me = LocalLoad(replica_id="api-1")
    decision = DEFAULT_POLICY.place(query, [mine_finished, others_busy], default=me)
    assert decision.scores["a"] > decision.scores["b"]


def test_each_routing_policy_does_what_its_name_says() -> None:
    """``api.routing``: where a prefix lives on a busy node, prefix-aware weighs
    the two, least-load ignores the prefix, prefix-only ignores the load, and
    round-robin takes every node in turn whatever either says."""
    from volt.placement import ROUTING, routing_policy

    nodes = [node("a", running=2), node("b"), node("c")]
    holds = PlacementQuery(model="m", affinity={"a": 1.0})

    def pick(name: str, query: PlacementQuery = holds) -> str:
        chosen = routing_policy(name).place(query, nodes).node
        assert chosen is not None
        return chosen.node_id

    assert pick("prefix_aware") == "a"   # 1/3 * (1 + 3) beats 1: worth two queued requests
    assert pick("least_load") in {"b", "c"}
    assert pick("prefix_only") == "a"
    crowded = [node("a", running=9), node("b")]
    assert DEFAULT_POLICY.place(holds, crowded).node.node_id == "b"  # type: ignore[union-attr]
    assert routing_policy("prefix_only").place(holds, crowded).node.node_id == "a"  # type: ignore[union-attr]
    rotation = routing_policy("round_robin")
    assert [rotation.place(holds, nodes).node.node_id for _ in range(6)] == \
        ["b", "c", "a", "b", "c", "a"]  # type: ignore[union-attr]
    assert set(ROUTING) == {"prefix_aware", "least_load", "prefix_only", "round_robin", "random"}
