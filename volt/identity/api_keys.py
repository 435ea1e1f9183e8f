"""API keys in the store: issue, list, read, revoke, and look up to verify.

A key is stored as HMAC-SHA256(secret) under the keyring's ``api-key-hmac``
and found by its id (part of the key, not secret), then compared in constant
time (``hmac.compare_digest``). The secret itself is shown once, when the key
is made.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import and_, or_, select, update

from volt.identity.api_key_format import Mode, ParsedKey, display_prefix, format_key, new_key
from volt.identity.principal import (
    NO_LIMITS,
    Limits,
    Role,
    Scope,
    format_scopes,
    parse_scopes,
)
from volt.identity.tables import ApiKey
from volt.store.catalog import Catalog
from volt.store.database import Database
from volt.store.schema import Org


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What the store knows of a key (never its secret)."""

    id: str
    org_id: str
    name: str
    mode: Mode
    role: Role
    scopes: frozenset[Scope]
    prefix: str
    created_at: datetime
    created_by: str
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None
    limits: Limits


@dataclass(frozen=True, slots=True)
class IssuedKey:
    record: KeyRecord
    key: str
    """The secret key; shown once and never stored."""


@dataclass(frozen=True, slots=True)
class KeyLookup:
    """What verifying a key needs, in one read."""

    record: KeyRecord
    hash: str
    org_name: str
    catalog: Catalog


def _aware(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes; they were stored as UTC.
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _record(row: ApiKey) -> KeyRecord:
    return KeyRecord(
        id=row.id, org_id=row.org_id, name=row.name,
        mode="test" if row.mode == "test" else "live", role=Role(row.role),
        scopes=parse_scopes(row.scopes), prefix=row.prefix,
        created_at=_aware(row.created_at) or datetime.now(UTC), created_by=row.created_by,
        expires_at=_aware(row.expires_at), last_used_at=_aware(row.last_used_at),
        revoked_at=_aware(row.revoked_at),
        limits=Limits(requests_per_minute=row.rpm_limit, tokens_per_minute=row.tpm_limit),
    )


class ApiKeys:
    def __init__(self, db: Database, hmac_key: bytes) -> None:
        self.db = db
        self._hmac_key = hmac_key

    def hash(self, parsed: ParsedKey) -> str:
        return hmac.new(self._hmac_key, f"{parsed.key_id}:{parsed.secret}".encode(),
                        hashlib.sha256).hexdigest()

    def matches(self, parsed: ParsedKey, stored_hash: str) -> bool:
        return hmac.compare_digest(self.hash(parsed), stored_hash)

    async def create(
        self, org_id: str, name: str, *, mode: Mode = "live", role: Role = Role.MEMBER,
        scopes: frozenset[Scope] = frozenset(Scope), expires_at: datetime | None = None,
        created_by: str = "", limits: Limits = NO_LIMITS, imported: ParsedKey | None = None,
    ) -> IssuedKey:
        """Issue a key. ``imported`` stores a key made elsewhere (the dev key file)."""
        if imported is None:
            key, parsed = new_key(mode)
        else:
            parsed = imported
            key = format_key(parsed.mode, parsed.key_id, parsed.secret)
        row = ApiKey(
            id=parsed.key_id, org_id=org_id, name=name, mode=parsed.mode, role=role.value,
            scopes=format_scopes(scopes), hash=self.hash(parsed), prefix=display_prefix(key),
            created_at=datetime.now(UTC), created_by=created_by, expires_at=expires_at,
            rpm_limit=limits.requests_per_minute, tpm_limit=limits.tokens_per_minute,
        )
        async with self.db.session() as session, session.begin():
            session.add(row)
        return IssuedKey(_record(row), key)

    async def page(self, org_id: str, *, limit: int, after: str | None = None
                   ) -> tuple[list[KeyRecord], bool]:
        """Newest first; ``after``: the last id of the previous page. (keys, has_more)."""
        statement = select(ApiKey).where(ApiKey.org_id == org_id)
        if after is not None:
            async with self.db.session() as session:
                cursor = await session.get(ApiKey, after)
            if cursor is None or cursor.org_id != org_id:
                raise LookupError(after)
            statement = statement.where(or_(
                ApiKey.created_at < cursor.created_at,
                and_(ApiKey.created_at == cursor.created_at, ApiKey.id < cursor.id)))
        statement = statement.order_by(ApiKey.created_at.desc(), ApiKey.id.desc()).limit(limit + 1)
        async with self.db.session() as session:
            rows = (await session.scalars(statement)).all()
        return [_record(row) for row in rows[:limit]], len(rows) > limit

    async def get(self, org_id: str, key_id: str) -> KeyRecord | None:
        """The key, or None, also when it belongs to another org."""
        async with self.db.session() as session:
            row = await session.get(ApiKey, key_id)
        return _record(row) if row is not None and row.org_id == org_id else None

    async def revoke(self, org_id: str, key_id: str) -> KeyRecord | None:
        async with self.db.session() as session, session.begin():
            row = await session.get(ApiKey, key_id)
            if row is None or row.org_id != org_id:
                return None
            if row.revoked_at is None:
                row.revoked_at = datetime.now(UTC)
            return _record(row)

    async def lookup(self, key_id: str) -> KeyLookup | None:
        async with self.db.session() as session:
            found = (await session.execute(
                select(ApiKey, Org.name, Org.catalog).join(Org, Org.id == ApiKey.org_id)
                .where(ApiKey.id == key_id))).first()
        if found is None:
            return None
        row, org_name, catalog = found
        return KeyLookup(_record(row), row.hash, org_name, Catalog.from_json(catalog))

    async def touch(self, last_used: Mapping[str, datetime]) -> None:
        """Record when keys were last used (batched by the authenticator)."""
        async with self.db.session() as session, session.begin():
            for key_id, when in last_used.items():
                await session.execute(
                    update(ApiKey).where(ApiKey.id == key_id, or_(
                        ApiKey.last_used_at.is_(None), ApiKey.last_used_at < when))
                    .values(last_used_at=when))
