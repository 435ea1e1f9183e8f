"""Bearer credentials to principals: API keys and OAuth access tokens.

API keys are parsed first (a bad checksum is refused without a lookup),
then looked up by id and their keyed hash compared in constant time. A key's
row is cached for ``ttl_s`` so the store is not read per request; revocation
does not wait for the cache: the API replica that revokes a key broadcasts
it (``volt.identity.revoked``) and every replica drops it at once
(``forget_key``). Unknown key ids are cached for a short while, so a client
hammering with a bad key cannot hammer the store.

Access tokens are verified by signature (no store read); verified tokens are
cached by their SHA-256 until they expire, and refused once their refresh
family is revoked.

When keys were last used is kept in memory and written in batches
(``flush_last_used``), never on the request path.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TypeVar

from volt.identity.access_tokens import AccessTokens
from volt.identity.api_key_format import MalformedKey, parse_key
from volt.identity.api_keys import ApiKeys, KeyLookup
from volt.identity.errors import AuthenticationFailed
from volt.identity.orgs import OrgRecord, Orgs
from volt.identity.principal import AuthMethod, Principal, spiffe_id

_NEGATIVE_TTL_S = 2.0
_MAX_ENTRIES = 10_000

_NO_CREDENTIAL = ("You didn't provide an API key. Send it as "
                  "`Authorization: Bearer volt_sk_live_...`.")


K = TypeVar("K")
V = TypeVar("V")


def _bounded_put(cache: dict[K, V], key: K, value: V) -> None:
    if len(cache) >= _MAX_ENTRIES:
        cache.pop(next(iter(cache)))
    cache[key] = value


class Authenticator:
    def __init__(
        self, keys: ApiKeys, tokens: AccessTokens, orgs: Orgs, *, trust_domain: str,
        ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.tokens = tokens
        self.orgs = orgs
        self.trust_domain = trust_domain
        self.ttl_s = ttl_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._keys: dict[str, tuple[float, KeyLookup | None, Principal | None]] = {}
        self._tokens: dict[str, tuple[int, Principal]] = {}
        self._orgs: dict[str, tuple[float, OrgRecord | None]] = {}
        self._revoked_families: dict[str, float] = {}
        self._proven: dict[bytes, tuple[float, KeyLookup, Principal]] = {}
        self._last_used: dict[str, float] = {}

    async def authenticate(self, authorization: str | None) -> Principal:
        if not authorization:
            raise AuthenticationFailed(_NO_CREDENTIAL)
        scheme, _, credential = authorization.partition(" ")
        credential = credential.strip()
        if scheme.lower() != "bearer" or not credential:
            raise AuthenticationFailed("The Authorization header must be `Bearer <API key>`.")
        if credential.startswith("volt_sk_"):
            return await self._api_key(credential)
        if credential.count(".") == 2:
            return await self._access_token(credential)
        raise AuthenticationFailed("Incorrect API key provided.")

    # -- API keys --------------------------------------------------------------

    async def _api_key(self, key: str) -> Principal:
        # A key already proven (format, checksum, keyed hash) is found by its
        # SHA-256 alone: the hot path skips the parse and the HMAC. The entry
        # holds the key's row, so revocation and expiry are still checked.
        digest = hashlib.sha256(key.encode()).digest()
        now = self.clock()
        proven = self._proven.get(digest)
        if proven is not None and proven[0] > now:
            return self._usable(proven[1], proven[2])
        try:
            parsed = parse_key(key)
        except MalformedKey as exc:
            raise AuthenticationFailed(f"Incorrect API key provided: {exc}.") from None
        cached = self._keys.get(parsed.key_id)
        if cached is not None and cached[0] > now:
            expires, lookup, principal = cached
        else:
            lookup = await self.keys.lookup(parsed.key_id)
            principal = self._key_principal(lookup) if lookup is not None else None
            expires = now + (self.ttl_s if lookup is not None else _NEGATIVE_TTL_S)
            _bounded_put(self._keys, parsed.key_id, (expires, lookup, principal))
        if lookup is None or principal is None or not self.keys.matches(parsed, lookup.hash):
            raise AuthenticationFailed("Incorrect API key provided.")
        _bounded_put(self._proven, digest, (expires, lookup, principal))
        return self._usable(lookup, principal)

    def _usable(self, lookup: KeyLookup, principal: Principal) -> Principal:
        record = lookup.record
        if record.revoked_at is not None:
            raise AuthenticationFailed("This API key has been revoked.", code="revoked_api_key")
        now = self.wall_clock()
        if record.expires_at is not None and record.expires_at.timestamp() <= now:
            raise AuthenticationFailed(
                f"This API key expired at {record.expires_at.isoformat()}.",
                code="expired_api_key")
        self._last_used[record.id] = now
        return principal

    def _key_principal(self, lookup: KeyLookup) -> Principal:
        record = lookup.record
        return Principal(
            org_id=record.org_id, org_name=lookup.org_name,
            spiffe_id=spiffe_id(self.trust_domain, record.org_id, "key", record.id),
            method=AuthMethod.API_KEY, credential_id=record.id, role=record.role,
            scopes=record.scopes, mode=record.mode, catalog=lookup.catalog,
            limits=record.limits,
        )

    def forget_key(self, key_id: str) -> None:
        """The key changed (revoked): read it from the store on its next use."""
        self._keys.pop(key_id, None)
        for digest, (_, lookup, _) in list(self._proven.items()):
            if lookup.record.id == key_id:
                del self._proven[digest]

    async def flush_last_used(self) -> None:
        if self._last_used:
            batch, self._last_used = self._last_used, {}
            await self.keys.touch({key_id: datetime.fromtimestamp(when, UTC)
                                   for key_id, when in batch.items()})

    # -- access tokens ---------------------------------------------------------

    async def _access_token(self, token: str) -> Principal:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self.wall_clock()
        cached = self._tokens.get(digest)
        if cached is not None and cached[0] > now:
            principal = cached[1]
        else:
            claims = self.tokens.verify(token)
            org = await self._org(claims.org_id)
            if org is None:
                raise AuthenticationFailed("The access token's organization no longer exists.",
                                           code="invalid_token")
            principal = Principal(
                org_id=org.id, org_name=org.name, spiffe_id=claims.spiffe_id,
                method=AuthMethod.DEVICE_TOKEN, credential_id=claims.client_id,
                role=claims.role, scopes=claims.scopes, catalog=org.catalog,
                user_id=claims.user_id, family=claims.family_id,
            )
            _bounded_put(self._tokens, digest, (claims.expires_unix, principal))
        if principal.family in self._revoked_families:
            raise AuthenticationFailed("This access token has been revoked; sign in again.",
                                       code="invalid_token")
        return principal

    async def _org(self, org_id: str) -> OrgRecord | None:
        now = self.clock()
        cached = self._orgs.get(org_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        org = await self.orgs.get(org_id)
        _bounded_put(self._orgs, org_id, (now + self.ttl_s, org))
        return org

    def revoke_family(self, family_id: str, expires_unix: float) -> None:
        now = self.wall_clock()
        for family, until in list(self._revoked_families.items()):
            if until < now:
                del self._revoked_families[family]
        self._revoked_families[family_id] = expires_unix
