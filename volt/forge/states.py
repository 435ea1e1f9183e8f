"""A lease's lifecycle: states, events, one transition table.

::

    (create, starts now)          (create, starts later)
            │                            │
            ▼            start           ▼
      PROVISIONING ◄──────────────── PENDING ──terminate──► TERMINATED
        │   │    │                      │
        │   │    └─fail (rolled back)───┴─fail (no capacity at start)──► FAILED
        │   │ provisioned
        │   ▼
        │  ACTIVE ──end / terminate──► EXPIRING ──torn_down──► TERMINATED
        └─────────────terminate───────────▲

GPUs are held from PROVISIONING until TERMINATED or FAILED, and released only
once the lease's namespace is gone and its nodes are untainted: a node goes
back to Spark clean. PROVISIONING and EXPIRING are the states a restarted
scheduler must finish (``RESUME``); everything in them is idempotent.
"""

from __future__ import annotations

from enum import StrEnum

from volt.lifecycle import Lifecycle


class LeaseState(StrEnum):
    PENDING = "pending"
    """Accepted; starts at its start time (holds no GPUs until then)."""
    PROVISIONING = "provisioning"
    """GPUs chosen and held; nodes draining Spark; the namespace being made."""
    ACTIVE = "active"
    """The tenant's: kubeconfigs can be minted."""
    EXPIRING = "expiring"
    """Ended (its time, or terminated): the namespace is being deleted."""
    TERMINATED = "terminated"
    FAILED = "failed"


class LeaseEvent(StrEnum):
    START = "start"
    PROVISIONED = "provisioned"
    FAIL = "fail"
    END = "end"
    TERMINATE = "terminate"
    TORN_DOWN = "torn_down"


S, E = LeaseState, LeaseEvent
TRANSITIONS: dict[tuple[LeaseState, LeaseEvent], LeaseState] = {
    (S.PENDING, E.START): S.PROVISIONING,
    (S.PENDING, E.TERMINATE): S.TERMINATED,
    (S.PENDING, E.FAIL): S.FAILED,
    (S.PROVISIONING, E.PROVISIONED): S.ACTIVE,
    (S.PROVISIONING, E.FAIL): S.FAILED,
    (S.PROVISIONING, E.TERMINATE): S.EXPIRING,
    (S.PROVISIONING, E.END): S.EXPIRING,
    (S.ACTIVE, E.END): S.EXPIRING,
    (S.ACTIVE, E.TERMINATE): S.EXPIRING,
    (S.EXPIRING, E.TORN_DOWN): S.TERMINATED,
}

TERMINAL = frozenset({S.TERMINATED, S.FAILED})
LIVE = frozenset(LeaseState) - TERMINAL
HOLDS_GPUS = frozenset({S.PROVISIONING, S.ACTIVE, S.EXPIRING})
COUNTS_AGAINST_QUOTA = LIVE
RESUME = frozenset({S.PROVISIONING, S.EXPIRING})

LEASES: Lifecycle[LeaseState, LeaseEvent] = Lifecycle("lease", TRANSITIONS, TERMINAL)
