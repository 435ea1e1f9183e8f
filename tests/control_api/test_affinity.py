from __future__ import annotations

from volt.control_api.affinity import AffinityIndex, prefix_blocks
from volt.placement import DEFAULT_POLICY, PlacementQuery
from volt.wire import EngineLoad, NodeView

SYSTEM = "You are the support bot for a sovereign GPU cloud. " * 20  # ~1 KB shared prefix


def node(node_id: str, running: int = 0) -> NodeView:
    return NodeView(node_id=node_id, metro="fra", tier="standard", models=["m"], state="ready",
                    load=EngineLoad(running=running),
                    inflight_by_replica={"another-api": running} if running else {})


def test_shared_prefixes_match_from_the_start_only() -> None:
    index = AffinityIndex()
    first = prefix_blocks(SYSTEM + "question one")
    index.served(first, "a", None)
    assert index.matches(prefix_blocks(SYSTEM + "question two")) == {"a": 1.0}
    # Same later blocks, different start: a chained hash does not match.
    assert index.matches(prefix_blocks("other start. " + SYSTEM)) == {}
    longer = prefix_blocks(SYSTEM + "x" * 1024)
    assert 0 < index.matches(longer)["a"] < 1


def test_a_prefix_holder_is_preferred_until_it_is_busy() -> None:
    query = PlacementQuery(model="m", affinity={"holder": 1.0})
    for queued, expected in ((0, "holder"), (2, "holder"), (4, "idle")):
        decision = DEFAULT_POLICY.place(query, [node("holder", running=queued), node("idle")])
        assert decision.node is not None
        assert decision.node.node_id == expected, queued


def test_sessions_stick_and_are_remembered_per_name() -> None:
    index = AffinityIndex()
    index.served([], "b", "tenant:s1")
    assert index.session_node("tenant:s1") == "b"
    assert index.session_node("tenant:s2") is None
    assert index.session_node(None) is None


def test_the_index_is_bounded() -> None:
    index = AffinityIndex(prefix_capacity=4)
    for i in range(10):
        index.served(prefix_blocks(f"{i}" * 300), "a", None)
    assert index.matches(prefix_blocks("0" * 300)) == {}
    assert index.matches(prefix_blocks("9" * 300)) == {"a": 1.0}
