"""Resource lifecycles: one flat transition table per kind, shared machinery.

Leases (``volt/forge/states.py``) are the first kind; racks and fine-tune jobs
follow the same shape (Ironic's ``states.py`` is the model): a ``StrEnum`` of
states, one of events, a table ``(state, event) -> state`` you can read top to
bottom, and named groups (live, terminal). An event with no entry for the
current state is an error (``InvalidTransition``), never a silent no-op.
The scheduler is the only writer; it persists every transition with its
reason (``volt/store/resources.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)


class InvalidTransition(Exception):
    def __init__(self, kind: str, state: str, event: str) -> None:
        super().__init__(f"a {kind} in state {state} cannot take {event}")
        self.kind = kind
        self.state = state
        self.event = event


@dataclass(frozen=True)
class Lifecycle(Generic[S, E]):
    kind: str
    transitions: Mapping[tuple[S, E], S]
    terminal: frozenset[S]

    def next(self, state: S, event: E) -> S:
        try:
            return self.transitions[(state, event)]
        except KeyError:
            raise InvalidTransition(self.kind, state, event) from None

    def allows(self, state: S, event: E) -> bool:
        return (state, event) in self.transitions
