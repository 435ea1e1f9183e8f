"""A tenant's credentials for Volt's Redfish proxy — never a BMC's own.

Minted by the scheduler (the rack's single writer) and kept in the rack's
row: the username, an HMAC-SHA256 of the password under a key outside the
store (``vault-proxy-hmac`` in the secrets folder: a copy of the store alone
cannot test guesses), when it was made, when it expires (default 8 h) and
when it was revoked. The password is shown once. Every credential of a rack
is revoked when the rack is released.

The proxy also hands out Redfish sessions (``X-Auth-Token``): a token names
its credential and expiry and is MACed with the same key, so any proxy
replica can check one without shared session state; it dies with its
credential (expiry, revocation, release) or when the session is deleted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from dataclasses import dataclass
from typing import Any

USERNAME = re.compile(r"^([a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?)_([0-9a-f]{8})$")
"""``<rack id>_<8 hex>``: the rack is in the name, so the proxy finds it at once."""


def digest(key: bytes, password: str) -> str:
    return hmac.new(key, b"volt.vault.redfish/" + password.encode(), hashlib.sha256).hexdigest()


def new_credential(key: bytes, rack_id: str, *, now: float, ttl_s: float,
                   created_by: str) -> tuple[dict[str, Any], str]:
    """(the entry to store, the password to show once)."""
    suffix = secrets.token_hex(4)
    password = secrets.token_urlsafe(24)
    entry = {"id": f"rfc-{suffix}", "username": f"{rack_id}_{suffix}",
             "secret": digest(key, password), "created_at": now, "expires_at": now + ttl_s,
             "revoked_at": None, "created_by": created_by}
    return entry, password


def rack_of(username: str) -> str | None:
    match = USERNAME.match(username)
    return match[1] if match else None


def usable(entry: dict[str, Any], now: float) -> bool:
    return entry.get("revoked_at") is None and now < float(entry["expires_at"])


def matches(key: bytes, entry: dict[str, Any], password: str) -> bool:
    return hmac.compare_digest(entry["secret"], digest(key, password))


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    username: str
    expires_at: int


def issue_session(key: bytes, username: str, expires_at: float) -> tuple[Session, str]:
    session = Session(id=secrets.token_hex(8), username=username, expires_at=int(expires_at))
    body = base64.urlsafe_b64encode(json.dumps(
        {"sid": session.id, "u": username, "exp": session.expires_at},
        separators=(",", ":")).encode()).decode().rstrip("=")
    mac = hmac.new(key, b"volt.vault.session/" + body.encode(), hashlib.sha256).hexdigest()
    return session, f"{body}.{mac}"


def read_session(key: bytes, token: str, now: float) -> Session | None:
    """The session the token is for, if its MAC holds and it has not expired."""
    body, _, mac = token.partition(".")
    expected = hmac.new(key, b"volt.vault.session/" + body.encode(), hashlib.sha256).hexdigest()
    if not mac or not hmac.compare_digest(mac, expected):
        return None
    try:
        claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        session = Session(id=str(claims["sid"]), username=str(claims["u"]),
                          expires_at=int(claims["exp"]))
    except (ValueError, KeyError, TypeError):
        return None
    return session if now < session.expires_at else None
