"""The node table with an injected clock: expiry without sleeping."""

from __future__ import annotations

import pytest

from volt.scheduler.node_states import (
    TRANSITIONS,
    InvalidTransition,
    NodeEvent,
    NodeState,
    next_state,
)
from volt.scheduler.node_table import NodeTable
from volt.wire import EngineLoad, Heartbeat, NodeGoodbye, NodeHello


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(node: str = "n1", *, ready: bool = True, interval: float = 2.0,
         running: int = 0) -> Heartbeat:
    return Heartbeat(node_id=node, metro="fra", tier="standard", models=["m"], seal="sealed",
                     engine_ready=ready, heartbeat_interval_s=interval,
                     load=EngineLoad(running=running))


def state(table: NodeTable, node: str = "n1") -> NodeState:
    record = table.get(node)
    assert record is not None
    return record.state


def test_a_node_that_misses_three_heartbeats_leaves_and_comes_back() -> None:
    clock = Clock()
    table = NodeTable(missed_heartbeats=3, clock=clock)
    assert table.observe(beat())
    assert state(table) is NodeState.READY
    clock.now += 5.9  # under 3 x 2 s
    assert table.sweep() == []
    assert state(table) is NodeState.READY
    clock.now += 0.2  # past 6 s since the last heartbeat
    assert table.sweep() == ["n1"]
    assert state(table) is NodeState.LOST
    assert table.sweep() == []  # expired once, not again
    assert table.observe(beat())
    assert state(table) is NodeState.READY


def test_expiry_follows_each_nodes_own_interval() -> None:
    clock = Clock()
    table = NodeTable(clock=clock)
    table.observe(beat("fast", interval=0.1))
    table.observe(beat("slow", interval=10.0))
    clock.now += 0.31
    assert table.sweep() == ["fast"]


def test_engine_readiness_and_load_come_from_heartbeats() -> None:
    table = NodeTable(clock=Clock())
    table.observe(beat(ready=False))
    assert state(table) is NodeState.NOT_READY
    assert table.observe(beat(ready=True))
    assert not table.observe(beat(ready=True, running=5))  # load alone is not a change
    record = table.get("n1")
    assert record is not None
    assert record.load.running == 5


def test_goodbye_leaves_at_once_and_a_hello_rejoins() -> None:
    table = NodeTable(clock=Clock())
    table.observe(beat())
    assert table.observe(NodeGoodbye(node_id="n1"))
    assert state(table) is NodeState.LEFT
    assert not table.observe(NodeGoodbye(node_id="n1"))
    assert not table.observe(NodeGoodbye(node_id="unknown"))
    table.observe(NodeHello(node_id="n1", metro="fra", tier="standard", models=["m"]))
    assert state(table) is NodeState.NOT_READY  # until a heartbeat says the engine is up


def test_long_gone_nodes_are_forgotten() -> None:
    clock = Clock()
    table = NodeTable(clock=clock, forget_after_s=60)
    table.observe(beat())
    clock.now += 7
    table.sweep()
    clock.now += 61
    table.sweep()
    assert table.get("n1") is None


def test_illegal_transitions_raise() -> None:
    with pytest.raises(InvalidTransition):
        next_state(NodeState.LOST, NodeEvent.EXPIRE)
    with pytest.raises(InvalidTransition):
        next_state(NodeState.LEFT, NodeEvent.GOODBYE)
    # Every state can come back with a heartbeat.
    for node_state in NodeState:
        assert (node_state, NodeEvent.HEARTBEAT_READY) in TRANSITIONS


@pytest.mark.parametrize(("seal", "allowed", "placeable"), [
    ("sealed", False, True), ("insecure", False, False), ("insecure", True, True),
    ("broken", True, False), ("", True, False),
])
def test_only_sealed_nodes_take_work(seal: str, allowed: bool, placeable: bool) -> None:
    table = NodeTable(allow_unsealed=allowed)
    table.observe(Heartbeat(node_id="n1", metro="fra", tier="standard", models=["m"],
                            seal=seal, seal_problem="shares the agent's namespace"))
    record = table.get("n1")
    assert record is not None
    assert (record.state is NodeState.READY) is placeable
    if not placeable:
        assert record.problems
