"""Tenants and their API keys.

A key looks like ``volt_sk_live_<43 url-safe characters>`` (256 random bits).
The store keeps only its SHA-256 digest and a short prefix for listings; the
key itself is shown once, when it is created. Every key belongs to a tenant,
and every tenant has a SPIFFE ID that requests are mapped to.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from sqlalchemy import select

from volt.store.catalog import EVERYTHING, Catalog
from volt.store.database import Database
from volt.store.schema import ApiKey, Tenant

KEY_PREFIX = "volt_sk_live_"
TRUST_DOMAIN = "volt.local"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def looks_like_key(value: str) -> bool:
    return value.startswith(KEY_PREFIX) and len(value) > len(KEY_PREFIX) + 16


@dataclass(frozen=True, slots=True)
class IssuedKey:
    id: str
    tenant_id: str
    key: str
    """The secret; shown once and never stored."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for."""

    tenant_id: str
    tenant_name: str
    spiffe_id: str
    key_id: str
    catalog: Catalog = EVERYTHING


class ApiKeys:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ensure_tenant(self, name: str) -> Tenant:
        async with self.db.session() as session, session.begin():
            tenant = await session.scalar(select(Tenant).where(Tenant.name == name))
            if tenant is None:
                tenant_id = "ten_" + secrets.token_hex(8)
                tenant = Tenant(
                    id=tenant_id, name=name,
                    spiffe_id=f"spiffe://{TRUST_DOMAIN}/tenant/{tenant_id}",
                )
                session.add(tenant)
            return tenant

    async def create(self, tenant_name: str, name: str, key: str | None = None) -> IssuedKey:
        """Issue a key for a tenant (created if new). ``key`` imports an existing secret."""
        key = key or new_key()
        if not looks_like_key(key):
            raise ValueError(f"API keys start with {KEY_PREFIX}")
        tenant = await self.ensure_tenant(tenant_name)
        key_id = "key_" + secrets.token_hex(8)
        async with self.db.session() as session, session.begin():
            session.add(ApiKey(
                id=key_id, tenant_id=tenant.id, name=name,
                prefix=key[: len(KEY_PREFIX) + 6], digest=digest(key),
            ))
        return IssuedKey(id=key_id, tenant_id=tenant.id, key=key)

    async def verify(self, key: str) -> Principal | None:
        async with self.db.session() as session:
            row = (await session.execute(
                select(ApiKey.id, Tenant.id, Tenant.name, Tenant.spiffe_id, Tenant.catalog)
                .join(Tenant, Tenant.id == ApiKey.tenant_id)
                .where(ApiKey.digest == digest(key), ApiKey.revoked_at.is_(None))
            )).first()
        if row is None:
            return None
        key_id, tenant_id, tenant_name, spiffe_id, catalog = row
        return Principal(
            tenant_id=tenant_id, tenant_name=tenant_name, spiffe_id=spiffe_id, key_id=key_id,
            catalog=Catalog.from_json(catalog),
        )

    async def set_catalog(self, tenant_name: str, catalog: Catalog) -> None:
        """Limit (or, with ``EVERYTHING``, free) what a tenant may use; created if new."""
        tenant = await self.ensure_tenant(tenant_name)
        async with self.db.session() as session, session.begin():
            row = await session.get(Tenant, tenant.id)
            assert row is not None
            row.catalog = catalog.to_json()
