"""Bearer API keys: verified against the store, cached briefly in memory.

The cache is keyed by the key's digest (the key itself is not kept), holds
verified keys for ``ttl_s`` (so a revoked key stops working within that time)
and unknown keys for a short while (so a client hammering with a bad key
cannot hammer the store). It is bounded.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from volt.control_api.errors import Unauthenticated
from volt.store import ApiKeys, Principal
from volt.store.api_keys import digest, looks_like_key

_NEGATIVE_TTL_S = 2.0
_MAX_ENTRIES = 10_000


class Authenticator:
    def __init__(
        self, keys: ApiKeys, *, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.keys = keys
        self.ttl_s = ttl_s
        self.clock = clock
        self._cache: dict[str, tuple[float, Principal | None]] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise Unauthenticated(
                "You didn't provide an API key. "
                "Send it as `Authorization: Bearer volt_sk_live_...`."
            )
        scheme, _, key = authorization.partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            raise Unauthenticated("The Authorization header must be `Bearer <API key>`.")
        if not looks_like_key(key):
            raise Unauthenticated("Incorrect API key provided.")
        key_digest = digest(key)
        now = self.clock()
        cached = self._cache.get(key_digest)
        if cached is not None and cached[0] > now:
            principal = cached[1]
        else:
            principal = await self.keys.verify(key)
            if len(self._cache) >= _MAX_ENTRIES:
                self._cache.pop(next(iter(self._cache)))
            ttl = self.ttl_s if principal is not None else _NEGATIVE_TTL_S
            self._cache[key_digest] = (now + ttl, principal)
        if principal is None:
            raise Unauthenticated("Incorrect API key provided.")
        return principal
