"""Console sessions: server-side, behind an opaque cookie.

The cookie (``volt_session``) holds a random id; the store holds its hash,
the user, when it ends and the session's CSRF token. It is ``HttpOnly``
(scripts cannot read it), ``Secure`` and ``SameSite=Lax`` (other sites'
forms do not carry it). Every form carries the CSRF token as well, compared
in constant time (``check_csrf``).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete

from volt.identity.tables import ConsoleSession
from volt.store.database import Database

COOKIE = "volt_session"
SESSION_TTL_S = 8 * 3600


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Session:
    user_id: str
    issuer_name: str
    csrf_token: str
    expires_unix: float

    def check_csrf(self, presented: str | None) -> bool:
        return presented is not None and hmac.compare_digest(presented, self.csrf_token)


def cookie_header(session_id: str, *, max_age: int = SESSION_TTL_S) -> str:
    return (f"{COOKIE}={session_id}; Path=/; Max-Age={max_age}; HttpOnly; Secure; "
            "SameSite=Lax")


def clearing_cookie_header() -> str:
    return f"{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax"


class Sessions:
    def __init__(self, db: Database, *, ttl_s: float = SESSION_TTL_S,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.ttl_s = ttl_s
        self.clock = clock

    async def create(self, user_id: str, issuer_name: str) -> str:
        """A new session; returns the id for the cookie (never stored)."""
        session_id = secrets.token_urlsafe(32)
        now = self.clock()
        async with self.db.session() as session, session.begin():
            session.add(ConsoleSession(
                id_hash=_hash(session_id), user_id=user_id, issuer_name=issuer_name,
                csrf_token=secrets.token_urlsafe(24), created_unix=now,
                expires_unix=now + self.ttl_s))
        return session_id

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        async with self.db.session() as session:
            row = await session.get(ConsoleSession, _hash(session_id))
        if row is None or row.expires_unix <= self.clock():
            return None
        return Session(row.user_id, row.issuer_name, row.csrf_token, row.expires_unix)

    async def end(self, session_id: str) -> None:
        async with self.db.session() as session, session.begin():
            await session.execute(delete(ConsoleSession).where(
                ConsoleSession.id_hash == _hash(session_id)))
