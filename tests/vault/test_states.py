"""The rack transition table: a rack returns to available only by cleaning."""

from __future__ import annotations

import pytest

from volt.lifecycle import InvalidTransition
from volt.vault.states import RACKS, TRANSITIONS, RackEvent, RackState


def test_a_whole_tenancy_goes_round_through_cleaning() -> None:
    state = RackState.AVAILABLE
    for event in (RackEvent.RESERVE, RackEvent.PROVISION, RackEvent.BOOTED,
                  RackEvent.ATTESTED, RackEvent.RELEASE, RackEvent.CLEAN, RackEvent.CLEANED):
        state = RACKS.next(state, event)
    assert state is RackState.AVAILABLE


def test_only_cleaning_makes_a_rack_available_again() -> None:
    into_available = {source for (source, _), target in TRANSITIONS.items()
                      if target is RackState.AVAILABLE}
    assert into_available == {RackState.CLEANING}
    assert RACKS.next(RackState.CLEANING, RackEvent.CLEAN_FAILED) is RackState.MAINTENANCE
    assert RACKS.next(RackState.MAINTENANCE, RackEvent.REPAIRED) is RackState.CLEANING


def test_a_failed_rack_keeps_its_reason_until_released() -> None:
    assert RACKS.next(RackState.PROVISIONING, RackEvent.FAIL) is RackState.FAILED
    with pytest.raises(InvalidTransition):
        RACKS.next(RackState.FAILED, RackEvent.PROVISION)
    assert RACKS.next(RackState.FAILED, RackEvent.RELEASE) is RackState.RELEASING
