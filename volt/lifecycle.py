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

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, TypeVar

log = logging.getLogger(__name__)
S = TypeVar("S", bound=StrEnum)
E = TypeVar("E", bound=StrEnum)


class Refusal(Exception):
    """A writer's command refused: the API answers ``status`` with ``code``
    (Forge's ``ForgeError``, Vault's ``VaultError``)."""

    def __init__(self, message: str, *, code: str, status: int, param: str | None = None
                 ) -> None:
        super().__init__(message)
        self.code = code
        self.status = status
        self.param = param


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


async def reconcile_forever(reconcile: Callable[[], Awaitable[None]], wake: asyncio.Event,
                            interval_s: float, kind: str) -> None:
    """A writer's loop: one reconcile pass at every interval, and at once when
    ``wake`` is set (after a command). A failing pass is logged; the next one
    tries again."""
    while True:
        try:
            await reconcile()
        except Exception:
            log.exception("%s reconcile failed", kind)
        wake.clear()
        try:
            await asyncio.wait_for(wake.wait(), interval_s)
        except TimeoutError:
            pass


def remaining(steps: tuple[str, ...], done: str) -> tuple[str, ...]:
    """The steps after the last one stored as done (all of them when none is):
    where work resumes after a restart."""
    return steps[steps.index(done) + 1:] if done else steps
