"""The lease transition table: what may follow what, and nothing else."""

from __future__ import annotations

import pytest

from volt.forge.states import HOLDS_GPUS, LEASES, LIVE, TERMINAL, LeaseEvent, LeaseState
from volt.lifecycle import InvalidTransition


def test_the_happy_path_and_its_exits() -> None:
    state = LeaseState.PENDING
    for event in (LeaseEvent.START, LeaseEvent.PROVISIONED, LeaseEvent.END,
                  LeaseEvent.TORN_DOWN):
        state = LEASES.next(state, event)
    assert state is LeaseState.TERMINATED
    assert LEASES.next(LeaseState.PROVISIONING, LeaseEvent.FAIL) is LeaseState.FAILED
    assert LEASES.next(LeaseState.PENDING, LeaseEvent.TERMINATE) is LeaseState.TERMINATED


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_nothing_leaves_a_terminal_state(state: LeaseState) -> None:
    for event in LeaseEvent:
        with pytest.raises(InvalidTransition, match=f"lease in state {state}"):
            LEASES.next(state, event)


def test_an_active_lease_cannot_go_back_or_fail_silently() -> None:
    for event in (LeaseEvent.START, LeaseEvent.PROVISIONED, LeaseEvent.TORN_DOWN,
                  LeaseEvent.FAIL):
        assert not LEASES.allows(LeaseState.ACTIVE, event)


def test_gpus_are_held_only_between_placement_and_teardown() -> None:
    assert {LeaseState.PROVISIONING, LeaseState.ACTIVE, LeaseState.EXPIRING} == HOLDS_GPUS
    assert HOLDS_GPUS <= LIVE
    assert not LIVE & TERMINAL
