"""The OAuth 2.0 device authorization grant (RFC 8628), Volt as the
authorization server, and rotating refresh tokens.

The CLI asks for a device code (``start``), shows the user code, and polls
(``poll``); a signed-in member enters the user code on the verification page
and approves or denies (``approve``/``deny``). Every error state of the RFC
is a distinct ``OAuthFailure``: ``authorization_pending``; ``slow_down`` for
a client that polls faster than its interval (the interval grows by 5 s and
the grant remembers it); ``expired_token``; ``access_denied``; and
``invalid_grant`` for a device code that is unknown, another client's, or
already redeemed. A code is redeemed exactly once: the change from
``approved`` to ``redeemed`` is one conditional UPDATE, and only the request
whose UPDATE changed the row gets tokens.

Device codes and refresh tokens are random 256-bit strings stored only as
SHA-256 hashes. User codes use RFC 8628 §6.1's base-20 consonant alphabet
(no vowels, so no words; no look-alike characters), shown as ``XXXX-XXXX`` and
normalised on entry (case, dashes and spaces ignored).

Refresh tokens rotate: each use retires the token (``rotated``) and issues
the next in its family. A retired token presented again means it leaked:
the whole family is revoked, and the family's live access tokens with it
(``revoked_token_families``; API replicas are told at once). Refreshing also
re-reads the member's role, so a removed member cannot refresh.

Time comes from an injected clock, so tests walk through expiry and
``slow_down`` without sleeping.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import select, update

from volt.identity.access_tokens import AccessTokens
from volt.identity.orgs import Orgs
from volt.identity.principal import Role, Scope, format_scopes, parse_scopes, spiffe_id
from volt.identity.tables import DeviceGrant, RefreshToken, RevokedTokenFamily
from volt.store.database import Database

DEVICE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"
USER_CODE_ALPHABET = "BCDFGHJKLMNPQRSTVWXZ"
USER_CODE_LENGTH = 8
SLOW_DOWN_STEP_S = 5


class OAuthFailure(Exception):
    """An RFC 6749/8628 error: ``error`` is the registered code."""

    def __init__(self, error: str, description: str, *, status: int = 400) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def normalize_user_code(text: str) -> str:
    return "".join(ch for ch in text.upper() if ch.isalnum())


def display_user_code(code: str) -> str:
    return f"{code[:4]}-{code[4:]}"


@dataclass(frozen=True, slots=True)
class DeviceStart:
    device_code: str
    user_code: str
    expires_in: int
    interval: int


@dataclass(frozen=True, slots=True)
class PendingGrant:
    """What the verification page shows before the member decides."""

    user_code: str
    client_id: str
    scopes: frozenset[Scope]


@dataclass(frozen=True, slots=True)
class Tokens:
    access_token: str
    expires_in: int
    refresh_token: str
    scopes: frozenset[Scope]


class DeviceFlow:
    def __init__(
        self, db: Database, orgs: Orgs, access: AccessTokens, *, trust_domain: str,
        clients: frozenset[str], code_ttl_s: int = 600, interval_s: int = 5,
        refresh_ttl_s: int = 30 * 24 * 3600, clock: Callable[[], float] = time.time,
        on_family_revoked: Callable[[str, float], object] | None = None,
    ) -> None:
        self.db = db
        self.orgs = orgs
        self.access = access
        self.trust_domain = trust_domain
        self.clients = clients
        self.code_ttl_s = code_ttl_s
        self.interval_s = interval_s
        self.refresh_ttl_s = refresh_ttl_s
        self.clock = clock
        self.on_family_revoked = on_family_revoked

    def _client(self, client_id: str) -> None:
        if client_id not in self.clients:
            raise OAuthFailure("invalid_client", f"Unknown client {client_id!r}.", status=401)

    # -- the device's side ---------------------------------------------------------

    async def start(self, client_id: str, scope: str | None) -> DeviceStart:
        self._client(client_id)
        try:
            scopes = parse_scopes(scope) if scope else frozenset(Scope)
        except ValueError as exc:
            raise OAuthFailure("invalid_scope", str(exc)) from None
        if not scopes:
            raise OAuthFailure("invalid_scope", "Ask for `read`, `write` or both.")
        now = self.clock()
        device_code = secrets.token_urlsafe(32)
        for _ in range(5):  # a user code collision is rare; draw again
            user_code = "".join(secrets.choice(USER_CODE_ALPHABET)
                                for _ in range(USER_CODE_LENGTH))
            async with self.db.session() as session, session.begin():
                if await session.scalar(select(DeviceGrant.device_code_hash).where(
                        DeviceGrant.user_code == user_code)) is not None:
                    continue
                session.add(DeviceGrant(
                    device_code_hash=_hash(device_code), user_code=user_code,
                    client_id=client_id, scopes=format_scopes(scopes), status="pending",
                    interval_s=self.interval_s, expires_unix=now + self.code_ttl_s,
                    created_unix=now))
            return DeviceStart(device_code, display_user_code(user_code), self.code_ttl_s,
                               self.interval_s)
        raise OAuthFailure("temporarily_unavailable", "Try again.", status=503)

    async def poll(self, client_id: str, device_code: str) -> Tokens:
        self._client(client_id)
        now = self.clock()
        code_hash = _hash(device_code)
        # The failure is raised after the transaction commits: a poll's time and
        # a raised interval must be remembered even though the poll fails.
        failure: OAuthFailure | None = None
        async with self.db.session() as session, session.begin():
            grant = await session.get(DeviceGrant, code_hash)
            if grant is None or grant.client_id != client_id:
                failure = OAuthFailure("invalid_grant", "Unknown device code.")
            elif grant.status == "redeemed":
                failure = OAuthFailure("invalid_grant", "This device code was already used.")
            elif grant.expires_unix <= now:
                failure = OAuthFailure("expired_token", "The device code expired; start again.")
            elif grant.status == "denied":
                failure = OAuthFailure("access_denied", "The request was denied.")
            elif grant.status == "pending":
                too_soon = (grant.last_poll_unix is not None
                            and now - grant.last_poll_unix < grant.interval_s)
                grant.last_poll_unix = now
                if too_soon:
                    grant.interval_s += SLOW_DOWN_STEP_S
                    failure = OAuthFailure(
                        "slow_down", f"Polling too fast; wait {grant.interval_s} s between polls.")
                else:
                    failure = OAuthFailure("authorization_pending",
                                           "Waiting for the user to approve.")
            else:
                org_id, user_id = grant.org_id, grant.user_id
                scopes = parse_scopes(grant.scopes)
        if failure is not None:
            raise failure
        # Approved: redeem it, exactly once, whoever else is polling with the same code.
        async with self.db.session() as session, session.begin():
            changed = await session.execute(
                update(DeviceGrant)
                .where(DeviceGrant.device_code_hash == code_hash,
                       DeviceGrant.status == "approved")
                .values(status="redeemed"))
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            raise OAuthFailure("invalid_grant", "This device code was already used.")
        assert org_id is not None
        assert user_id is not None
        return await self._issue(client_id, org_id, user_id, scopes, "fam_" + secrets.token_hex(8))

    # -- the member's side (the verification page) -----------------------------------

    async def pending(self, user_code: str) -> PendingGrant | None:
        code = normalize_user_code(user_code)
        async with self.db.session() as session:
            grant = await session.scalar(select(DeviceGrant).where(DeviceGrant.user_code == code))
        if grant is None or grant.status != "pending" or grant.expires_unix <= self.clock():
            return None
        return PendingGrant(display_user_code(code), grant.client_id,
                            parse_scopes(grant.scopes))

    async def approve(self, user_code: str, *, org_id: str, user_id: str) -> bool:
        return await self._decide(user_code, "approved", org_id=org_id, user_id=user_id)

    async def deny(self, user_code: str) -> bool:
        return await self._decide(user_code, "denied")

    async def _decide(self, user_code: str, status: str, *, org_id: str | None = None,
                      user_id: str | None = None) -> bool:
        async with self.db.session() as session, session.begin():
            changed = await session.execute(
                update(DeviceGrant)
                .where(DeviceGrant.user_code == normalize_user_code(user_code),
                       DeviceGrant.status == "pending",
                       DeviceGrant.expires_unix > self.clock())
                .values(status=status, org_id=org_id, user_id=user_id))
        return bool(changed.rowcount == 1)  # type: ignore[attr-defined]

    # -- tokens ------------------------------------------------------------------------

    async def _issue(self, client_id: str, org_id: str, user_id: str,
                     wanted: frozenset[Scope], family_id: str) -> Tokens:
        role = await self.orgs.role_of(org_id, user_id)
        if role is None:
            raise OAuthFailure("invalid_grant", "You are no longer a member of this org.")
        scopes = wanted if role.at_least(Role.MEMBER) else wanted & {Scope.READ}
        if not scopes:
            raise OAuthFailure("invalid_scope", f"A {role} cannot have the `write` scope.")
        access, expires_in = self.access.issue(
            spiffe_id=spiffe_id(self.trust_domain, org_id, "user", user_id), org_id=org_id,
            user_id=user_id, role=role, scopes=scopes, client_id=client_id, family_id=family_id)
        refresh = secrets.token_urlsafe(32)
        now = self.clock()
        async with self.db.session() as session, session.begin():
            session.add(RefreshToken(
                token_hash=_hash(refresh), family_id=family_id, client_id=client_id,
                org_id=org_id, user_id=user_id, scopes=format_scopes(scopes), status="active",
                created_unix=now, expires_unix=now + self.refresh_ttl_s))
        return Tokens(access, expires_in, refresh, scopes)

    async def refresh(self, client_id: str, refresh_token: str) -> Tokens:
        self._client(client_id)
        token_hash = _hash(refresh_token)
        async with self.db.session() as session:
            token = await session.get(RefreshToken, token_hash)
        if token is None or token.client_id != client_id:
            raise OAuthFailure("invalid_grant", "Unknown refresh token.")
        if token.status == "rotated":
            await self.revoke_family(token.family_id)
            raise OAuthFailure("invalid_grant",
                               "This refresh token was already used: every token issued from "
                               "this sign-in is revoked. Sign in again.")
        if token.status != "active" or token.expires_unix <= self.clock():
            raise OAuthFailure("invalid_grant", "The refresh token expired or was revoked.")
        async with self.db.session() as session, session.begin():
            changed = await session.execute(
                update(RefreshToken)
                .where(RefreshToken.token_hash == token_hash, RefreshToken.status == "active")
                .values(status="rotated"))
        if changed.rowcount != 1:  # type: ignore[attr-defined]
            await self.revoke_family(token.family_id)  # two uses raced: one is a replay
            raise OAuthFailure("invalid_grant", "This refresh token was already used.")
        return await self._issue(client_id, token.org_id, token.user_id,
                                 parse_scopes(token.scopes), token.family_id)

    async def revoke_family(self, family_id: str) -> None:
        now = self.clock()
        until = now + self.access.ttl_s
        async with self.db.session() as session, session.begin():
            await session.execute(update(RefreshToken)
                                  .where(RefreshToken.family_id == family_id)
                                  .values(status="revoked"))
            if await session.get(RevokedTokenFamily, family_id) is None:
                session.add(RevokedTokenFamily(family_id=family_id, revoked_unix=now,
                                               expires_unix=until))
        if self.on_family_revoked is not None:
            await self.on_family_revoked(family_id, until)  # type: ignore[misc]

    async def revoked_families(self) -> dict[str, float]:
        """Families whose access tokens may still be live: (id -> until)."""
        async with self.db.session() as session:
            rows = await session.execute(
                select(RevokedTokenFamily.family_id, RevokedTokenFamily.expires_unix)
                .where(RevokedTokenFamily.expires_unix > self.clock()))
        return {family: until for family, until in rows.all()}  # noqa: C416 - Row pairs
