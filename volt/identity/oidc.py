"""OIDC sign-in for console admins: authorization code + PKCE, as a relying party.

For each configured issuer: the discovery document (whose ``issuer`` must be
the configured one), the JWKS (cached; fetched again when a token names a
``kid`` it lacks, at most every ``JWKS_REFETCH_S``), and an ID token checked
for everything OIDC Core §3.1.3.7 asks: signature by a key of the issuer, an
algorithm from ``ALLOWED_ALGORITHMS`` only (``none`` and HMAC are refused
before any key is used, so a token "signed" with the public key as an HMAC
secret cannot pass), ``iss``, ``aud`` (and ``azp`` when there are several
audiences), ``exp``, ``nbf``, ``iat``, the ``nonce`` of this login, and
``at_hash`` against the access token. The callback's ``iss`` parameter
(RFC 9207) must name the issuer the login started with, which defeats mix-up
attacks between issuers.

The ``state``, ``nonce`` and PKCE verifier of a login in progress are kept in
the store (any API replica may receive the callback), ``state`` as a hash,
and used once.

Group claims become org roles by configuration (``role_map``): each entry
maps a group to ``<org name>:<role>``; the highest role per org wins.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlparse

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from volt.identity.principal import Role
from volt.identity.tables import OidcLogin
from volt.store.database import Database

ALLOWED_ALGORITHMS = ("RS256", "ES256")
JWKS_REFETCH_S = 5.0
LOGIN_TTL_S = 600.0
CLOCK_SKEW_S = 60


class OidcError(Exception):
    """Sign-in failed; the message says why (shown to the person signing in)."""


@dataclass(frozen=True, slots=True)
class IssuerSettings:
    name: str
    issuer: str
    client_id: str
    client_secret: str
    groups_claim: str = "groups"
    role_map: tuple[tuple[str, str, Role], ...] = ()
    """(group, org name, role)."""
    scopes: tuple[str, ...] = ("openid", "email", "profile")


@dataclass(frozen=True, slots=True)
class OidcIdentity:
    issuer: str
    subject: str
    email: str
    groups: tuple[str, ...]


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def roles_for(settings: IssuerSettings, groups: tuple[str, ...]) -> dict[str, Role]:
    roles: dict[str, Role] = {}
    for group, org, role in settings.role_map:
        if group in groups and (org not in roles or role.at_least(roles[org])):
            roles[org] = role
    return roles


def local_path(value: str) -> str:
    """Where to go after sign-in: a path on this site only (no open redirect)."""
    parsed = urlparse(value)
    if value.startswith("/") and not value.startswith("//") and not parsed.netloc \
            and "\\" not in value:
        return value
    return "/console"


class Issuer:
    """One configured OpenID Provider."""

    def __init__(self, settings: IssuerSettings, http: httpx.AsyncClient, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = settings
        self.http = http
        self.clock = clock
        self._discovery: dict[str, Any] | None = None
        self._keys: KeySet | None = None
        self._keys_fetched = 0.0

    async def discovery(self) -> dict[str, Any]:
        if self._discovery is None:
            url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
            document = await self._get_json(url)
            if document.get("issuer") != self.settings.issuer:
                raise OidcError(f"the discovery document of {self.settings.issuer} names "
                                f"another issuer ({document.get('issuer')!r})")
            self._discovery = document
        return self._discovery

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            response = await self.http.get(url, timeout=10)
            response.raise_for_status()
            value = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise OidcError(f"could not read {url}: {type(exc).__name__}") from exc
        if not isinstance(value, dict):
            raise OidcError(f"{url} did not return a JSON object")
        return value

    async def _key_set(self, kid: str | None) -> KeySet:
        now = self.clock()
        known = self._keys is not None and (
            kid is None or any(k.kid == kid for k in self._keys.keys))
        if not known and (self._keys is None or now - self._keys_fetched >= JWKS_REFETCH_S):
            document = await self._get_json((await self.discovery())["jwks_uri"])
            try:
                self._keys = KeySet.import_key_set(document)  # type: ignore[arg-type]
            except (JoseError, ValueError, KeyError, TypeError) as exc:
                raise OidcError("the issuer's JWKS could not be read") from exc
            self._keys_fetched = now
        assert self._keys is not None
        return self._keys

    async def authorization_url(self, *, state: str, nonce: str, code_verifier: str,
                                redirect_uri: str) -> str:
        endpoint = (await self.discovery())["authorization_endpoint"]
        challenge = _b64url(hashlib.sha256(code_verifier.encode()).digest())
        query = urlencode({
            "response_type": "code", "client_id": self.settings.client_id,
            "redirect_uri": redirect_uri, "scope": " ".join(self.settings.scopes),
            "state": state, "nonce": nonce, "code_challenge": challenge,
            "code_challenge_method": "S256",
        })
        return f"{endpoint}?{query}"

    async def exchange(self, code: str, *, code_verifier: str, redirect_uri: str
                       ) -> dict[str, Any]:
        endpoint = (await self.discovery())["token_endpoint"]
        try:
            response = await self.http.post(endpoint, data={
                "grant_type": "authorization_code", "code": code,
                "redirect_uri": redirect_uri, "code_verifier": code_verifier,
            }, auth=(self.settings.client_id, self.settings.client_secret), timeout=10)
        except httpx.HTTPError as exc:
            raise OidcError(f"the token endpoint failed: {type(exc).__name__}") from exc
        if response.status_code != 200:
            raise OidcError(f"the issuer refused the code ({response.status_code})")
        value = response.json()
        if not isinstance(value, dict) or "id_token" not in value:
            raise OidcError("the issuer returned no ID token")
        return value

    async def verify_id_token(self, token: str, *, nonce: str,
                              access_token: str | None) -> dict[str, Any]:
        try:
            header_part = token.split(".")[0]
            padded = header_part + "=" * (-len(header_part) % 4)
            header = json.loads(base64.urlsafe_b64decode(padded))
        except (ValueError, IndexError) as exc:
            raise OidcError("the ID token is not a JWT") from exc
        alg = header.get("alg")
        if alg not in ALLOWED_ALGORITHMS:
            raise OidcError(f"the ID token's algorithm {alg!r} is not accepted")
        keys = await self._key_set(header.get("kid"))
        try:
            decoded = jwt.decode(token, keys, algorithms=[alg])
        except JoseError as exc:
            raise OidcError("the ID token's signature does not verify") from exc
        claims = decoded.claims
        now = self.clock()
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        checks = [
            (claims.get("iss") == self.settings.issuer, "it was issued by another issuer"),
            (self.settings.client_id in audiences, "it is meant for another client"),
            (len(audiences) == 1 or claims.get("azp") == self.settings.client_id,
             "it has several audiences and another authorized party"),
            (isinstance(claims.get("exp"), int | float) and claims["exp"] > now - CLOCK_SKEW_S,
             "it expired"),
            (claims.get("nbf") is None or claims["nbf"] <= now + CLOCK_SKEW_S,
             "it is not valid yet"),
            (isinstance(claims.get("iat"), int | float) and claims["iat"] <= now + CLOCK_SKEW_S,
             "it was issued in the future"),
            (isinstance(claims.get("nonce"), str)
             and secrets.compare_digest(claims["nonce"], nonce), "its nonce is not this login's"),
            (isinstance(claims.get("sub"), str) and bool(claims["sub"]), "it names no subject"),
        ]
        for ok, reason in checks:
            if not ok:
                raise OidcError(f"the ID token was refused: {reason}")
        if access_token is not None and "at_hash" in claims:
            digest = hashlib.sha256(access_token.encode()).digest()
            if claims["at_hash"] != _b64url(digest[: len(digest) // 2]):
                raise OidcError("the ID token was refused: its at_hash does not match")
        return dict(claims)

    def identity(self, claims: dict[str, Any]) -> OidcIdentity:
        raw = claims.get(self.settings.groups_claim, [])
        groups = (raw,) if isinstance(raw, str) else tuple(str(g) for g in raw or ())
        return OidcIdentity(self.settings.issuer, str(claims["sub"]),
                            str(claims.get("email", "")), groups)


class OidcLogins:
    """Logins in progress, in the store (``state`` hashed, used once)."""

    def __init__(self, db: Database, issuers: dict[str, Issuer], *, redirect_uri: str,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.issuers = issuers
        self.redirect_uri = redirect_uri
        self.clock = clock

    async def begin(self, issuer_name: str, return_to: str) -> str:
        """The URL to send the browser to."""
        issuer = self.issuers.get(issuer_name)
        if issuer is None:
            raise OidcError(f"no sign-in is configured for {issuer_name!r}")
        state, nonce = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
        verifier = secrets.token_urlsafe(48)
        async with self.db.session() as session, session.begin():
            session.add(OidcLogin(state_hash=_hash(state), issuer_name=issuer_name,
                                  nonce=nonce, code_verifier=verifier,
                                  return_to=local_path(return_to),
                                  expires_unix=self.clock() + LOGIN_TTL_S))
        return await issuer.authorization_url(state=state, nonce=nonce, code_verifier=verifier,
                                              redirect_uri=self.redirect_uri)

    async def complete(self, params: dict[str, str]) -> tuple[Issuer, OidcIdentity, str]:
        """(the issuer, who signed in, where to go next); ``OidcError`` otherwise."""
        state = params.get("state", "")
        async with self.db.session() as session, session.begin():
            login = await session.get(OidcLogin, _hash(state)) if state else None
            if login is not None:
                await session.delete(login)  # single use, whatever happens next
        if login is None or login.expires_unix <= self.clock():
            raise OidcError("this sign-in expired or was already used; start again")
        issuer = self.issuers.get(login.issuer_name)
        if issuer is None:
            raise OidcError("this sign-in's issuer is no longer configured")
        if "error" in params:
            raise OidcError(f"the issuer refused the sign-in: {params['error']}")
        discovery = await issuer.discovery()
        iss_expected = "iss" in params or discovery.get(
            "authorization_response_iss_parameter_supported")
        if iss_expected and params.get("iss") != issuer.settings.issuer:
            raise OidcError("the response came from another issuer (RFC 9207)")
        code = params.get("code")
        if not code:
            raise OidcError("the issuer sent no authorization code")
        tokens = await issuer.exchange(code, code_verifier=login.code_verifier,
                                       redirect_uri=self.redirect_uri)
        claims = await issuer.verify_id_token(
            str(tokens["id_token"]), nonce=login.nonce,
            access_token=tokens.get("access_token") if isinstance(
                tokens.get("access_token"), str) else None)
        return issuer, issuer.identity(claims), login.return_to
