"""OIDC sign-in against a real OpenID Provider (oidc-provider on loopback):
the whole code + PKCE flow with RS256 and ES256, group claims to org roles,
and every ID token a provider must never get accepted for."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import OctKey
from support.oidc import OidcProvider, User, login, new_keys
from support.requirements import require

from volt.identity.oidc import Issuer, IssuerSettings, OidcError, OidcLogins, roles_for
from volt.identity.principal import Role
from volt.store import Database

REDIRECT = "http://volt.test/console/callback"
ROLE_MAP = (("volt-admins", "acme", Role.ADMIN), ("ml-team", "acme", Role.MEMBER),
            ("ml-team", "labs", Role.VIEWER))


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OidcProvider]:
    if shutil.which("npm") is None:
        require("npm is needed to install oidc-provider")
    clients = [
        {"client_id": "volt-console", "client_secret": "s3cret-rs",
         "redirect_uris": [REDIRECT], "grant_types": ["authorization_code"],
         "response_types": ["code"], "id_token_signed_response_alg": "RS256"},
        {"client_id": "volt-console-ec", "client_secret": "s3cret-ec",
         "redirect_uris": [REDIRECT], "grant_types": ["authorization_code"],
         "response_types": ["code"], "id_token_signed_response_alg": "ES256"},
    ]
    users = {"alice": User("correct horse", "alice@example.com", ["volt-admins", "ml-team"]),
             "bob": User("battery staple", "bob@example.com", [])}
    with OidcProvider(tmp_path_factory.mktemp("oidc"), clients, users) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def settings(provider: OidcProvider, client: str = "volt-console",
             secret: str = "s3cret-rs") -> IssuerSettings:
    return IssuerSettings(name="test", issuer=provider.issuer, client_id=client,
                          client_secret=secret, role_map=ROLE_MAP,
                          scopes=("openid", "email", "profile", "groups"))


async def sign_in(db: Database, issuer: Issuer, user: str, password: str
                  ) -> tuple[dict[str, str], OidcLogins]:
    logins = OidcLogins(db, {"test": issuer}, redirect_uri=REDIRECT)
    authorize = await logins.begin("test", "/device?user_code=ABCD-EFGH")
    callback = login(authorize, user, password)
    assert callback.startswith(REDIRECT)
    return dict(parse_qsl(urlsplit(callback).query)), logins


@pytest.mark.parametrize(("client", "secret"), [("volt-console", "s3cret-rs"),
                                                ("volt-console-ec", "s3cret-ec")])
async def test_sign_in_maps_groups_to_org_roles(provider: OidcProvider, http: httpx.AsyncClient,
                                                db: Database, client: str, secret: str) -> None:
    issuer = Issuer(settings(provider, client, secret), http)
    params, logins = await sign_in(db, issuer, "alice", "correct horse")
    assert params["iss"] == provider.issuer  # RFC 9207
    used, who, return_to = await logins.complete(params)
    assert who.subject == "alice"
    assert who.email == "alice@example.com"
    assert set(who.groups) == {"volt-admins", "ml-team"}
    assert return_to == "/device?user_code=ABCD-EFGH"
    assert roles_for(used.settings, who.groups) == {"acme": Role.ADMIN, "labs": Role.VIEWER}
    with pytest.raises(OidcError, match="already used"):
        await logins.complete(params)  # a state is good once


async def test_a_wrong_password_never_reaches_the_callback(provider: OidcProvider,
                                                           http: httpx.AsyncClient,
                                                           db: Database) -> None:
    issuer = Issuer(settings(provider), http)
    logins = OidcLogins(db, {"test": issuer}, redirect_uri=REDIRECT)
    with pytest.raises(AssertionError, match="401"):
        login(await logins.begin("test", "/console"), "alice", "wrong")


async def test_a_response_from_another_issuer_is_refused(provider: OidcProvider,
                                                         http: httpx.AsyncClient,
                                                         db: Database) -> None:
    issuer = Issuer(settings(provider), http)
    params, logins = await sign_in(db, issuer, "bob", "battery staple")
    with pytest.raises(OidcError, match="RFC 9207"):
        await logins.complete({**params, "iss": "https://evil.example"})


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _claims(provider: OidcProvider, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims = {"iss": provider.issuer, "aud": "volt-console", "sub": "alice", "iat": now,
              "exp": now + 300, "nonce": "n-1", "groups": ["volt-admins"]}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def _sign(key: Any, claims: dict[str, Any], alg: str = "RS256") -> str:
    return jwt.encode({"alg": alg, "kid": key.kid}, claims, key, algorithms=[alg])


async def test_tokens_a_provider_must_never_get_accepted(provider: OidcProvider,
                                                         http: httpx.AsyncClient) -> None:
    rsa, ec = provider.keys
    issuer = Issuer(settings(provider), http)
    good = _claims(provider)
    assert (await issuer.verify_id_token(_sign(rsa, good), nonce="n-1",
                                         access_token=None))["sub"] == "alice"
    assert (await issuer.verify_id_token(_sign(ec, good, "ES256"), nonce="n-1",
                                         access_token=None))["sub"] == "alice"
    public = rsa.as_dict(private=False)
    hmac_key = OctKey.import_key(json.dumps(public).encode())
    foreign = new_keys()[0]
    foreign_same_kid = type(rsa).generate_key(2048, {"kid": rsa.kid})
    at = "access-token-1"
    at_hash = _b64(hashlib.sha256(at.encode()).digest()[:16])
    bad = {
        "expired": _sign(rsa, _claims(provider, exp=int(time.time()) - 3600,
                                      iat=int(time.time()) - 7200)),
        "wrong audience": _sign(rsa, _claims(provider, aud="someone-else")),
        "wrong issuer": _sign(rsa, _claims(provider, iss="https://evil.example")),
        "not yet valid": _sign(rsa, _claims(provider, nbf=int(time.time()) + 3600)),
        "wrong nonce": _sign(rsa, _claims(provider, nonce="n-2")),
        "alg none": _b64(b'{"alg":"none"}') + "." + _b64(json.dumps(good).encode()) + ".",
        "HS256 keyed with the public key": jwt.encode(
            {"alg": "HS256", "kid": rsa.kid}, good, hmac_key, algorithms=["HS256"]),
        "unknown key": _sign(foreign, good),
        "foreign key, same kid": _sign(foreign_same_kid, good),
        "several audiences, another azp": _sign(rsa, _claims(
            provider, aud=["volt-console", "other"], azp="other")),
        "bad at_hash": _sign(rsa, _claims(provider, at_hash=_b64(b"\0" * 16))),
    }
    accepted = []
    for name, token in bad.items():
        try:
            await issuer.verify_id_token(token, nonce="n-1", access_token=at)
        except OidcError:
            continue
        accepted.append(name)
    assert accepted == []
    right = _sign(rsa, _claims(provider, at_hash=at_hash))
    assert await issuer.verify_id_token(right, nonce="n-1", access_token=at)


async def test_rotated_keys_are_fetched_on_an_unknown_kid(provider: OidcProvider,
                                                          http: httpx.AsyncClient) -> None:
    skew = [0.0]  # the JWKS is fetched again at most every few seconds: step past that
    issuer = Issuer(settings(provider), http, clock=lambda: time.time() + skew[0])
    old = provider.keys[0]
    assert await issuer.verify_id_token(_sign(old, _claims(provider)), nonce="n-1",
                                        access_token=None)
    provider.rotate()
    skew[0] = 10.0
    new = provider.keys[0]
    assert new.kid != old.kid
    # The issuer's cached JWKS lacks the new kid: it fetches again and accepts.
    assert await issuer.verify_id_token(_sign(new, _claims(provider)), nonce="n-1",
                                        access_token=None)
    # A token signed by the retired key is refused now.
    with pytest.raises(OidcError):
        await Issuer(settings(provider), http).verify_id_token(
            _sign(old, _claims(provider)), nonce="n-1", access_token=None)

