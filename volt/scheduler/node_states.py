"""Node lifecycle as the scheduler sees it: states, events, one transition table.

::

              heartbeat(ready)                    expire
    (new) ─────────────────────► READY ───────────────────────► LOST
      │                          ▲   │ heartbeat(not ready)      │
      │ heartbeat(not ready)     │   ▼                           │ heartbeat
      └────────────────────► NOT_READY ─────expire──────────────►│
                                                                 │
    any state ──heartbeat(unhealthy GPU)──► UNHEALTHY ──heartbeat(ready)──► READY
    any live state ──goodbye──► LEFT ──heartbeat──► READY / NOT_READY

Only READY nodes take work: an UNHEALTHY node (a critical XID, uncorrectable
ECC errors; ``volt/gpu_health.py``) drains — what runs finishes, nothing new
comes. An event with no entry in ``TRANSITIONS`` for the
current state is an error (``InvalidTransition``), never a silent no-op.
"""

from __future__ import annotations

from enum import StrEnum


class NodeState(StrEnum):
    READY = "ready"
    """Heartbeating and its engine is serving."""
    NOT_READY = "not_ready"
    """Heartbeating, but its engine is starting or restarting."""
    UNHEALTHY = "unhealthy"
    """Heartbeating, but a GPU must not take work (the heartbeat says why)."""
    LOST = "lost"
    """Missed too many heartbeats: killed, partitioned or hung."""
    LEFT = "left"
    """Said goodbye: stopped on purpose."""


class NodeEvent(StrEnum):
    HEARTBEAT_READY = "heartbeat_ready"
    HEARTBEAT_NOT_READY = "heartbeat_not_ready"
    HEARTBEAT_UNHEALTHY = "heartbeat_unhealthy"
    EXPIRE = "expire"
    GOODBYE = "goodbye"


PLACEABLE = frozenset({NodeState.READY})
LIVE = frozenset({NodeState.READY, NodeState.NOT_READY, NodeState.UNHEALTHY})
GONE = frozenset({NodeState.LOST, NodeState.LEFT})

_ON_HEARTBEAT = {
    NodeEvent.HEARTBEAT_READY: NodeState.READY,
    NodeEvent.HEARTBEAT_NOT_READY: NodeState.NOT_READY,
    NodeEvent.HEARTBEAT_UNHEALTHY: NodeState.UNHEALTHY,
}

TRANSITIONS: dict[tuple[NodeState, NodeEvent], NodeState] = {
    **{(state, event): target for state in NodeState for event, target in _ON_HEARTBEAT.items()},
    **{(state, NodeEvent.EXPIRE): NodeState.LOST for state in LIVE},
    **{(state, NodeEvent.GOODBYE): NodeState.LEFT for state in (*LIVE, NodeState.LOST)},
}


class InvalidTransition(Exception):
    def __init__(self, state: NodeState, event: NodeEvent) -> None:
        super().__init__(f"no transition from {state} on {event}")
        self.state = state
        self.event = event


def initial_state(event: NodeEvent) -> NodeState:
    """The state of a node first seen through ``event`` (a hello or heartbeat)."""
    try:
        return _ON_HEARTBEAT[event]
    except KeyError:
        raise InvalidTransition(NodeState.LEFT, event) from None


def next_state(state: NodeState, event: NodeEvent) -> NodeState:
    try:
        return TRANSITIONS[(state, event)]
    except KeyError:
        raise InvalidTransition(state, event) from None
