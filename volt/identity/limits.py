"""Per-key requests-per-minute and tokens-per-minute, shared by every API replica.

A limit kept per process becomes N times the limit with N replicas (the bug
LiteLLM users report). Here each key's budget for a one-minute window lives
in a JetStream key-value bucket, and replicas *lease* it in chunks: a replica
takes ``chunk`` units with one compare-and-set on the window's counter, then
spends them locally without further round trips. The counter never passes
the limit, so the replicas together never admit more than the limit; the
price is that up to one chunk per replica may sit unused at the end of a
window (chunks are 1/16 of the limit, at least 1).

Requests are counted when admitted. Tokens are known only when a request
ends: a key is admitted while its window still has tokens left, and the
request's tokens are charged when its usage arrives (``charge``), which may
take the window past zero; the key then waits for the next window.

Refusals are 429 with ``Retry-After`` (seconds to the window's end) and
OpenAI's ``x-ratelimit-*`` headers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from volt.wire import subjects

log = logging.getLogger(__name__)

BUCKET = subjects.LIMITS_BUCKET
WINDOW_S = 60
CAS_ATTEMPTS = 8


@dataclass
class _Lease:
    window: int
    granted: int = 0
    used: int = 0
    exhausted: bool = False
    """The shared counter reached the limit: nothing more to lease this window."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass(frozen=True, slots=True)
class LimitState:
    kind: str
    """``requests`` or ``tokens`` (OpenAI's header names)."""
    limit: int
    remaining: int
    reset_s: int


class LimitExceeded(Exception):
    def __init__(self, state: LimitState) -> None:
        super().__init__(f"Rate limit reached for {state.kind} per minute "
                         f"(limit {state.limit}); try again in {state.reset_s} s.")
        self.state = state


def limit_headers(states: list[LimitState]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for state in states:
        headers[f"x-ratelimit-limit-{state.kind}"] = str(state.limit)
        headers[f"x-ratelimit-remaining-{state.kind}"] = str(max(state.remaining, 0))
        headers[f"x-ratelimit-reset-{state.kind}"] = f"{state.reset_s}s"
    return headers


class SharedLimits:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._kv: KeyValue | None = None
        self._leases: dict[tuple[str, str], _Lease] = {}
        self._background: set[asyncio.Task[None]] = set()

    async def start(self, nc: Client) -> None:
        js = nc.jetstream()
        try:
            self._kv = await js.key_value(BUCKET)
        except BucketNotFoundError:
            self._kv = await js.create_key_value(KeyValueConfig(
                bucket=BUCKET, history=1, ttl=3 * WINDOW_S))

    def _window(self) -> tuple[int, int]:
        now = self.clock()
        window = int(now // WINDOW_S)
        return window, max(1, math.ceil((window + 1) * WINDOW_S - now))

    def _lease(self, credential: str, kind: str, window: int) -> _Lease:
        lease = self._leases.get((credential, kind))
        if lease is None or lease.window != window:
            lease = _Lease(window)
            self._leases[(credential, kind)] = lease
        return lease

    async def _take(self, credential: str, kind: str, lease: _Lease, limit: int,
                    wanted: int) -> int:
        """Lease up to ``wanted`` more units from the shared counter; how many it got."""
        if lease.exhausted or self._kv is None:
            return 0
        key = f"{kind}.{credential.replace('.', '_')}.{lease.window}"
        for _ in range(CAS_ATTEMPTS):
            try:
                entry = await self._kv.get(key)
                value, revision = int(entry.value or b"0"), entry.revision
            except KeyNotFoundError:
                value, revision = 0, None
            take = min(wanted, limit - value)
            if take <= 0:
                lease.exhausted = True
                return 0
            try:
                if revision is None:
                    await self._kv.create(key, str(take).encode())
                else:
                    await self._kv.update(key, str(value + take).encode(), last=revision)
            except KeyWrongLastSequenceError:
                continue  # another replica leased first: read again
            lease.granted += take
            return take
        return 0

    def _chunk(self, limit: int) -> int:
        return max(1, limit // 16)

    async def admit(self, credential: str, *, requests_per_minute: int | None,
                    tokens_per_minute: int | None) -> list[LimitState]:
        """Count one request; ``LimitExceeded`` if either limit is spent."""
        window, reset_s = self._window()
        states = []
        if requests_per_minute is not None:
            lease = self._lease(credential, "requests", window)
            async with lease.lock:
                if lease.used >= lease.granted:
                    await self._take(credential, "requests", lease, requests_per_minute,
                                     self._chunk(requests_per_minute))
                if lease.used >= lease.granted:
                    raise LimitExceeded(LimitState("requests", requests_per_minute, 0, reset_s))
                lease.used += 1
                states.append(LimitState("requests", requests_per_minute,
                                         self._remaining(lease, requests_per_minute), reset_s))
        if tokens_per_minute is not None:
            lease = self._lease(credential, "tokens", window)
            async with lease.lock:
                if lease.used >= lease.granted:
                    await self._take(credential, "tokens", lease, tokens_per_minute,
                                     self._chunk(tokens_per_minute))
                if lease.used >= lease.granted:
                    raise LimitExceeded(LimitState("tokens", tokens_per_minute, 0, reset_s))
                states.append(LimitState("tokens", tokens_per_minute,
                                         self._remaining(lease, tokens_per_minute), reset_s))
        return states

    def _remaining(self, lease: _Lease, limit: int) -> int:
        # What this replica knows: its own unspent lease, plus what was never
        # leased if the window is not exhausted (an estimate across replicas).
        return max(0, lease.granted - lease.used) + (0 if lease.exhausted
                                                     else max(0, limit - lease.granted))

    def charge(self, credential: str, tokens: int, tokens_per_minute: int | None) -> None:
        """A request's tokens, once its usage is known (never on the request path)."""
        if tokens_per_minute is None or tokens <= 0:
            return
        window, _ = self._window()
        lease = self._lease(credential, "tokens", window)
        lease.used += tokens
        short = lease.used - lease.granted
        if short > 0:
            task = asyncio.create_task(self._settle(credential, lease, tokens_per_minute, short))
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def _settle(self, credential: str, lease: _Lease, limit: int, short: int) -> None:
        with contextlib.suppress(Exception):  # a lost charge only under-counts
            async with lease.lock:
                await self._take(credential, "tokens", lease, limit,
                                 max(short, self._chunk(limit)))
