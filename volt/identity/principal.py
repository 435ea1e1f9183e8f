"""Who a request acts for: a principal, its org, role and scopes, and its SPIFFE ID.

A principal is an API key, a device-flow access token or an OIDC console
session. Each maps to one SPIFFE ID under the configured trust domain::

    spiffe://<trust-domain>/org/<org_id>/key/<key_id>     an API key
    spiffe://<trust-domain>/org/<org_id>/user/<user_id>   a person (device flow, console)

The ID travels with every placement request, usage record and audit event.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from enum import StrEnum

from volt.identity.api_key_format import Mode
from volt.store.catalog import EVERYTHING, Catalog


class Role(StrEnum):
    """Org roles, from least to most powerful; each can do what those below it can."""

    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"
    OWNER = "owner"

    @property
    def rank(self) -> int:
        return _RANKS[self]

    def at_least(self, other: Role) -> bool:
        return _RANKS[self] >= _RANKS[other]


_RANKS = {role: rank for rank, role in enumerate(Role)}


class Scope(StrEnum):
    READ = "read"
    WRITE = "write"


ALL_SCOPES = frozenset(Scope)


def parse_scopes(text: str) -> frozenset[Scope]:
    """OAuth's space-separated scope string (``"read write"``)."""
    try:
        return frozenset(Scope(part) for part in text.split())
    except ValueError:
        raise ValueError(f"unknown scope in {text!r}; scopes are `read` and `write`") from None


def format_scopes(scopes: frozenset[Scope]) -> str:
    return " ".join(sorted(scopes))


class AuthMethod(StrEnum):
    API_KEY = "api_key"
    DEVICE_TOKEN = "device_token"
    OIDC_SESSION = "oidc_session"


_SEGMENT = re.compile(r"[A-Za-z0-9._-]+")


def spiffe_id(trust_domain: str, org_id: str, kind: str, name: str) -> str:
    """``spiffe://<td>/org/<org>/<kind>/<name>``; each segment checked against
    the SPIFFE ID grammar (letters, digits, ``.``, ``-``, ``_``)."""
    for segment in (org_id, kind, name):
        if not _SEGMENT.fullmatch(segment):
            raise ValueError(f"not a SPIFFE path segment: {segment!r}")
    return f"spiffe://{trust_domain}/org/{org_id}/{kind}/{name}"


@dataclass(frozen=True, slots=True)
class Limits:
    """Per-key Spark limits, shared by every API replica; ``None``: unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None


NO_LIMITS = Limits()


@dataclass(frozen=True, slots=True)
class Principal:
    org_id: str
    org_name: str
    spiffe_id: str
    method: AuthMethod
    credential_id: str
    """The key id, the OAuth client id or the user id: how the caller authenticated."""
    role: Role
    scopes: frozenset[Scope]
    mode: Mode = "live"
    """``test``: a ``volt_sk_test_`` key, which reaches only test capacity and is never billed."""
    catalog: Catalog = EVERYTHING
    user_id: str = ""
    limits: Limits = field(default_factory=Limits)
    family: str = ""
    """For an access token: its refresh-token family (revoking the family revokes it)."""

    @property
    def key_id(self) -> str:
        """What usage records file the request under: the key, or for a person, the user."""
        return self.credential_id if self.method is AuthMethod.API_KEY else self.user_id
