"""Short-lived OAuth access tokens: JWTs signed with Ed25519 (joserfc).

Issued by the device grant and refreshed with rotating refresh tokens
(``device_flow.py``). Every API replica verifies them with the keyring's
public key: no store lookup per request. A token carries its refresh family,
so revoking a family (a replayed refresh token) also stops its live access
tokens (``Authenticator`` checks the revoked families).

Only ``Ed25519`` is accepted: the algorithm is pinned, so ``alg: none`` or an
HMAC algorithm keyed with the public key cannot get through.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import OKPKey

from volt.identity.errors import AuthenticationFailed
from volt.identity.principal import Role, Scope, format_scopes, parse_scopes

ALGORITHM = "Ed25519"
AUDIENCE = "volt-api"


@dataclass(frozen=True, slots=True)
class AccessClaims:
    spiffe_id: str
    org_id: str
    user_id: str
    role: Role
    scopes: frozenset[Scope]
    client_id: str
    family_id: str
    expires_unix: int


class AccessTokens:
    def __init__(self, signing_key: Ed25519PrivateKey, *, issuer: str, ttl_s: int,
                 clock: Callable[[], float] = time.time) -> None:
        self._key = OKPKey.import_key(signing_key)
        self.key_id = self._key.thumbprint()
        self.issuer = issuer
        self.ttl_s = ttl_s
        self.clock = clock
        self._claims = jwt.JWTClaimsRegistry(
            now=lambda: int(self.clock()), leeway=5,
            iss={"essential": True, "value": issuer},
            aud={"essential": True, "value": AUDIENCE},
            exp={"essential": True},
            sub={"essential": True},
        )

    def issue(self, *, spiffe_id: str, org_id: str, user_id: str, role: Role,
              scopes: frozenset[Scope], client_id: str, family_id: str) -> tuple[str, int]:
        """(the token, seconds until it expires)."""
        now = int(self.clock())
        claims = {
            "iss": self.issuer, "aud": AUDIENCE, "sub": spiffe_id, "iat": now, "nbf": now,
            "exp": now + self.ttl_s, "jti": secrets.token_urlsafe(12),
            "scope": format_scopes(scopes), "org": org_id, "uid": user_id, "role": role.value,
            "client_id": client_id, "fam": family_id,
        }
        token = jwt.encode({"alg": ALGORITHM, "kid": self.key_id, "typ": "at+jwt"}, claims,
                           self._key, algorithms=[ALGORITHM])
        return token, self.ttl_s

    def verify(self, token: str) -> AccessClaims:
        try:
            decoded = jwt.decode(token, self._key, algorithms=[ALGORITHM])
            self._claims.validate(decoded.claims)
            claims = decoded.claims
            return AccessClaims(
                spiffe_id=str(claims["sub"]), org_id=str(claims["org"]),
                user_id=str(claims["uid"]), role=Role(claims["role"]),
                scopes=parse_scopes(str(claims["scope"])), client_id=str(claims["client_id"]),
                family_id=str(claims["fam"]), expires_unix=int(claims["exp"]),
            )
        except (JoseError, KeyError, ValueError, TypeError) as exc:
            raise AuthenticationFailed(
                "The access token is invalid or expired; sign in again (`volt login`).",
                code="invalid_token") from exc
