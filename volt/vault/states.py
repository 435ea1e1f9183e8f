"""A rack's lifecycle: states, events, one transition table (Ironic's node
states are the model).

::

    AVAILABLE ─reserve─► RESERVED ─provision─► PROVISIONING ─booted─► ATTESTING
                                                                          │ attested
    AVAILABLE ◄─cleaned── CLEANING ◄─clean── RELEASING ◄─release── READY ◄┘
                             │                  ▲
                             │ clean_failed     └─release── RESERVED, PROVISIONING,
                             ▼                              ATTESTING, FAILED
                        MAINTENANCE ─repaired─► CLEANING
    PROVISIONING, ATTESTING ─fail─► FAILED (the reason kept until released)

A rack returns to AVAILABLE only through CLEANING (every node cleaned);
anything that goes wrong there sends it to MAINTENANCE with the reason, for
an operator. PROVISIONING, ATTESTING, RELEASING and CLEANING are the states a
restarted scheduler resumes.
"""

from __future__ import annotations

from enum import StrEnum

from volt.lifecycle import Lifecycle


class RackState(StrEnum):
    AVAILABLE = "available"
    RESERVED = "reserved"
    PROVISIONING = "provisioning"
    ATTESTING = "attesting"
    READY = "ready"
    RELEASING = "releasing"
    CLEANING = "cleaning"
    FAILED = "failed"
    MAINTENANCE = "maintenance"


class RackEvent(StrEnum):
    RESERVE = "reserve"
    PROVISION = "provision"
    BOOTED = "booted"
    ATTESTED = "attested"
    FAIL = "fail"
    RELEASE = "release"
    CLEAN = "clean"
    CLEANED = "cleaned"
    CLEAN_FAILED = "clean_failed"
    REPAIRED = "repaired"
    MAINTAIN = "maintain"


S, E = RackState, RackEvent
TRANSITIONS: dict[tuple[RackState, RackEvent], RackState] = {
    (S.AVAILABLE, E.RESERVE): S.RESERVED,
    (S.RESERVED, E.PROVISION): S.PROVISIONING,
    (S.RESERVED, E.RELEASE): S.RELEASING,
    (S.PROVISIONING, E.BOOTED): S.ATTESTING,
    (S.PROVISIONING, E.FAIL): S.FAILED,
    (S.PROVISIONING, E.RELEASE): S.RELEASING,
    (S.ATTESTING, E.ATTESTED): S.READY,
    (S.ATTESTING, E.FAIL): S.FAILED,
    (S.ATTESTING, E.RELEASE): S.RELEASING,
    (S.READY, E.RELEASE): S.RELEASING,
    (S.FAILED, E.RELEASE): S.RELEASING,
    (S.RELEASING, E.CLEAN): S.CLEANING,
    (S.CLEANING, E.CLEANED): S.AVAILABLE,
    (S.CLEANING, E.CLEAN_FAILED): S.MAINTENANCE,
    (S.AVAILABLE, E.MAINTAIN): S.MAINTENANCE,
    (S.MAINTENANCE, E.REPAIRED): S.CLEANING,
}

RESUME = frozenset({S.PROVISIONING, S.ATTESTING, S.RELEASING, S.CLEANING})

RACKS: Lifecycle[RackState, RackEvent] = Lifecycle("rack", TRANSITIONS, frozenset())
