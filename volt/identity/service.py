"""``Identity``: the one object the API uses for who-may-do-what.

It authenticates bearer credentials and console sessions, checks a route's
rule (scope, role, and that an ``{org_id}`` in the path is the caller's own:
another org's is 404, never 403), records the audit event of every request,
enforces per-key limits across replicas, and runs API keys, the device grant
and OIDC sign-in on the store. Revocations travel to every replica over NATS
(``volt.identity.revoked``), so a revoked key or token family stops working
everywhere at once rather than when caches expire.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg

from volt.config import VoltConfig
from volt.identity.access_tokens import AccessTokens
from volt.identity.api_keys import ApiKeys, IssuedKey
from volt.identity.audit import AuditRecorder, build_event
from volt.identity.audit_log import AuditLog
from volt.identity.authenticator import Authenticator
from volt.identity.device_flow import DeviceFlow
from volt.identity.errors import AccessDenied, AuthenticationFailed, NoSuchResource
from volt.identity.keyring import Keyring
from volt.identity.limits import LimitState, SharedLimits
from volt.identity.oidc import Issuer, IssuerSettings, OidcLogins
from volt.identity.oidc_presets import PRESETS
from volt.identity.orgs import Orgs
from volt.identity.policy import AuditLevel, Rule
from volt.identity.principal import (
    NO_LIMITS,
    AuthMethod,
    Limits,
    Principal,
    Role,
    Scope,
    spiffe_id,
)
from volt.identity.sessions import Session, Sessions
from volt.store.database import Database
from volt.wire import IDENTITY, CredentialRevoked, encode, subjects

log = logging.getLogger(__name__)
LAST_USED_FLUSH_S = 5.0


def issuer_settings(config: VoltConfig) -> dict[str, IssuerSettings]:
    out = {}
    for entry in config.identity.oidc:
        preset = PRESETS[entry.preset]
        secret = entry.client_secret or (
            Path(entry.client_secret_file).read_text().strip()
            if entry.client_secret_file else "")
        role_map = []
        for group, target in entry.role_map.items():
            org, _, role = target.rpartition(":")
            role_map.append((group, org, Role(role)))
        out[entry.name] = IssuerSettings(
            name=entry.name, issuer=entry.issuer, client_id=entry.client_id,
            client_secret=secret, groups_claim=entry.groups_claim or preset.groups_claim,
            role_map=tuple(role_map), scopes=tuple(entry.scopes) or preset.scopes)
    return out


class Identity:
    def __init__(self, config: VoltConfig, db: Database) -> None:
        self.config = config
        settings = config.identity
        self.trust_domain = settings.trust_domain
        self.db = db
        keyring = Keyring(config.secrets_path())
        self.keys = ApiKeys(db, keyring.api_key_hmac())
        self.orgs = Orgs(db)
        self.access = AccessTokens(keyring.token_signing_key(), issuer=config.public_url(),
                                   ttl_s=settings.access_token_ttl_s)
        self.authenticator = Authenticator(self.keys, self.access, self.orgs,
                                           trust_domain=self.trust_domain,
                                           ttl_s=config.api.auth_cache_s)
        self.device = DeviceFlow(
            db, self.orgs, self.access, trust_domain=self.trust_domain,
            clients=frozenset(settings.device_clients), code_ttl_s=settings.device_code_ttl_s,
            interval_s=settings.device_poll_interval_s,
            refresh_ttl_s=settings.refresh_token_ttl_s, on_family_revoked=self._family_revoked)
        self.sessions = Sessions(db)
        self._http = httpx.AsyncClient(follow_redirects=False)
        self.issuers = {name: Issuer(s, self._http) for name, s in
                        issuer_settings(config).items()}
        self.logins = OidcLogins(db, self.issuers,
                                 redirect_uri=config.public_url() + "/console/callback")
        self.audit = AuditRecorder(flush_interval_s=config.audit.flush_interval_s)
        self.audit_log = AuditLog(db)
        self.limits = SharedLimits()
        self._nc: Client | None = None
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle -----------------------------------------------------------------

    async def start(self, nc: Client) -> None:
        self._nc = nc
        await nc.subscribe(subjects.IDENTITY_REVOKED, cb=self._on_revoked)
        for family, until in (await self.device.revoked_families()).items():
            self.authenticator.revoke_family(family, until)
        await self.audit.start(nc)
        await self.limits.start(nc)
        self._tasks.append(asyncio.create_task(self._flush_last_used()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        with contextlib.suppress(Exception):
            await self.authenticator.flush_last_used()
        await self.audit.close()
        await self._http.aclose()

    async def _flush_last_used(self) -> None:
        while True:
            await asyncio.sleep(LAST_USED_FLUSH_S)
            try:
                await self.authenticator.flush_last_used()
            except Exception as exc:  # the store is busy: the next round writes them
                log.warning("last-used flush failed: %s", type(exc).__name__)

    async def _on_revoked(self, msg: Msg) -> None:
        message = IDENTITY.decode_or_drop(msg.data)
        if isinstance(message, CredentialRevoked):
            if message.key_id:
                self.authenticator.forget_key(message.key_id)
            if message.family_id:
                self.authenticator.revoke_family(message.family_id, message.expires_unix)

    async def _broadcast(self, message: CredentialRevoked) -> None:
        if self._nc is not None:
            await self._nc.publish(subjects.IDENTITY_REVOKED, encode(message))
            await self._nc.flush(timeout=2)

    async def _family_revoked(self, family_id: str, until: float) -> None:
        self.authenticator.revoke_family(family_id, until)
        await self._broadcast(CredentialRevoked(family_id=family_id, expires_unix=until))

    # -- every request ---------------------------------------------------------------

    async def authenticate(self, authorization: str | None) -> Principal:
        return await self.authenticator.authenticate(authorization)

    async def session_principal(self, session_id: str | None,
                                org_id: str | None = None) -> tuple[Session, Principal | None]:
        """The console session, and (for ``org_id``) the principal it acts as there."""
        session = await self.sessions.get(session_id)
        if session is None:
            raise AuthenticationFailed("Sign in first.", code="no_session")
        if org_id is None:
            return session, None
        role = await self.orgs.role_of(org_id, session.user_id)
        org = await self.orgs.get(org_id)
        if role is None or org is None:
            raise NoSuchResource(f"No organization {org_id}.")
        return session, Principal(
            org_id=org.id, org_name=org.name,
            spiffe_id=spiffe_id(self.trust_domain, org.id, "user", session.user_id),
            method=AuthMethod.OIDC_SESSION, credential_id=session.user_id, role=role,
            scopes=frozenset(Scope), catalog=org.catalog, user_id=session.user_id)

    @staticmethod
    def authorize(principal: Principal, rule: Rule, path: Mapping[str, str]) -> None:
        """The route's rule, for this principal: isolation first (another org's
        id is 404 whatever the caller's rights), then scope and role (403)."""
        org_id = path.get("org_id")
        if org_id is not None and org_id != principal.org_id:
            raise NoSuchResource(f"No organization {org_id}.")
        if rule.scope is not None and rule.scope not in principal.scopes:
            raise AccessDenied(f"This credential lacks the `{rule.scope}` scope this route "
                               "needs.", code="insufficient_scope")
        if not principal.role.at_least(rule.role):
            raise AccessDenied(f"This route needs the {rule.role} role; this credential has "
                               f"{principal.role}.", code="insufficient_role")

    async def admit(self, principal: Principal) -> list[LimitState]:
        limits = self.effective_limits(principal)
        if limits.requests_per_minute is None and limits.tokens_per_minute is None:
            return []
        return await self.limits.admit(
            principal.credential_id, requests_per_minute=limits.requests_per_minute,
            tokens_per_minute=limits.tokens_per_minute)

    def charge(self, principal: Principal, tokens: int) -> None:
        self.limits.charge(principal.credential_id, tokens,
                           self.effective_limits(principal).tokens_per_minute)

    def effective_limits(self, principal: Principal) -> Limits:
        settings = self.config.identity
        own = principal.limits
        if own.requests_per_minute is None and own.tokens_per_minute is None and not (
                settings.requests_per_minute or settings.tokens_per_minute):
            return NO_LIMITS
        return Limits(
            requests_per_minute=principal.limits.requests_per_minute
            or settings.requests_per_minute or None,
            tokens_per_minute=principal.limits.tokens_per_minute
            or settings.tokens_per_minute or None)

    def record(self, *, request_id: str, principal: Principal | None, method: str, route: str,
               resources: Mapping[str, str], status: int, client: str, body: bytes | None,
               level: AuditLevel) -> None:
        if level is AuditLevel.NONE:
            return
        self.audit.record(build_event(
            request_id=request_id, principal=principal, method=method, route=route,
            resources=resources, status=status, client=client, body=body, level=level))

    # -- keys ------------------------------------------------------------------------

    async def create_key(self, principal: Principal, *, name: str, mode: str, role: Role,
                         scopes: frozenset[Scope], expires_at: datetime | None,
                         limits: Limits) -> IssuedKey:
        if not principal.role.at_least(role):
            raise AccessDenied(f"A {principal.role} cannot create a key with the {role} role.",
                               code="insufficient_role")
        if not scopes <= principal.scopes:
            raise AccessDenied("A key cannot have scopes its creator lacks.",
                               code="insufficient_scope")
        if expires_at is not None and expires_at <= datetime.now(UTC):
            from volt.identity.errors import InvalidInput

            raise InvalidInput("`expires_at` is in the past.", param="expires_at")
        return await self.keys.create(
            principal.org_id, name, mode="test" if mode == "test" else "live", role=role,
            scopes=scopes, expires_at=expires_at, created_by=principal.spiffe_id,
            limits=limits)

    async def revoke_key(self, org_id: str, key_id: str) -> None:
        record = await self.keys.revoke(org_id, key_id)
        if record is None:
            raise NoSuchResource(f"No API key {key_id}.")
        self.authenticator.forget_key(key_id)
        await self._broadcast(CredentialRevoked(key_id=key_id))


def wall_clock_ms() -> int:
    return int(time.time() * 1000)
