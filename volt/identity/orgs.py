"""Orgs, users and members in the store."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select

from volt.identity.principal import Role
from volt.identity.tables import Member, User
from volt.store.catalog import Catalog
from volt.store.database import Database
from volt.store.schema import Org


@dataclass(frozen=True, slots=True)
class OrgRecord:
    id: str
    name: str
    catalog: Catalog


@dataclass(frozen=True, slots=True)
class Membership:
    org_id: str
    org_name: str
    role: Role


def user_id_for(issuer: str, subject: str) -> str:
    """A stable, SPIFFE-safe id for an OIDC identity (subjects may hold any character)."""
    digest = hashlib.sha256(f"{issuer}\0{subject}".encode()).hexdigest()[:20]
    return "usr_" + digest


class Orgs:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def ensure(self, name: str) -> OrgRecord:
        """The org called ``name``, created if new."""
        async with self.db.session() as session, session.begin():
            org = await session.scalar(select(Org).where(Org.name == name))
            if org is None:
                org = Org(id="org_" + secrets.token_hex(8), name=name)
                session.add(org)
            return OrgRecord(org.id, org.name, Catalog.from_json(org.catalog))

    async def get(self, org_id: str) -> OrgRecord | None:
        async with self.db.session() as session:
            org = await session.get(Org, org_id)
        return None if org is None else OrgRecord(org.id, org.name,
                                                  Catalog.from_json(org.catalog))

    async def gpu_quota(self, org_id: str) -> int | None:
        """The org's own Forge GPU quota (None: the configured default)."""
        async with self.db.session() as session:
            org = await session.get(Org, org_id)
        return None if org is None else org.gpu_quota

    async def set_gpu_quota(self, org_id: str, gpus: int | None) -> None:
        async with self.db.session() as session, session.begin():
            org = await session.get(Org, org_id)
            if org is None:
                raise KeyError(org_id)
            org.gpu_quota = gpus

    async def by_name(self, name: str) -> OrgRecord | None:
        async with self.db.session() as session:
            org = await session.scalar(select(Org).where(Org.name == name))
        return None if org is None else OrgRecord(org.id, org.name,
                                                  Catalog.from_json(org.catalog))

    async def set_catalog(self, name: str, catalog: Catalog) -> None:
        """Limit (or, with ``EVERYTHING``, free) what an org may use; created if new."""
        org = await self.ensure(name)
        async with self.db.session() as session, session.begin():
            row = await session.get(Org, org.id)
            assert row is not None
            row.catalog = catalog.to_json()

    # -- people --------------------------------------------------------------

    async def ensure_user(self, issuer: str, subject: str, email: str = "") -> str:
        user_id = user_id_for(issuer, subject)
        async with self.db.session() as session, session.begin():
            user = await session.get(User, user_id)
            if user is None:
                session.add(User(id=user_id, issuer=issuer, subject=subject, email=email))
            elif email and user.email != email:
                user.email = email
        return user_id

    async def sync_oidc_roles(self, user_id: str, roles: dict[str, Role]) -> None:
        """Make the user's ``oidc`` memberships exactly ``roles`` (org name ->
        role), as the issuer's group claim says at this sign-in. Orgs named
        there are created if new; ``manual`` memberships are left alone."""
        org_ids = {(await self.ensure(name)).id: role for name, role in roles.items()}
        now = datetime.now(UTC)
        async with self.db.session() as session, session.begin():
            rows = (await session.scalars(
                select(Member).where(Member.user_id == user_id))).all()
            existing = {row.org_id: row for row in rows}
            for org_id, row in existing.items():
                if row.source == "oidc" and org_id not in org_ids:
                    await session.delete(row)
            for org_id, role in org_ids.items():
                member = existing.get(org_id)
                if member is None:
                    session.add(Member(org_id=org_id, user_id=user_id, role=role.value,
                                       source="oidc", updated_at=now))
                elif member.source == "oidc" and member.role != role.value:
                    member.role, member.updated_at = role.value, now

    async def set_member(self, org_id: str, user_id: str, role: Role) -> None:
        async with self.db.session() as session, session.begin():
            row = await session.get(Member, (org_id, user_id))
            if row is None:
                session.add(Member(org_id=org_id, user_id=user_id, role=role.value,
                                   source="manual", updated_at=datetime.now(UTC)))
            else:
                row.role, row.source = role.value, "manual"

    async def memberships(self, user_id: str) -> list[Membership]:
        async with self.db.session() as session:
            rows = (await session.execute(
                select(Member.org_id, Org.name, Member.role)
                .join(Org, Org.id == Member.org_id)
                .where(Member.user_id == user_id).order_by(Org.name))).all()
        return [Membership(org_id, name, Role(role)) for org_id, name, role in rows]

    async def role_of(self, org_id: str, user_id: str) -> Role | None:
        async with self.db.session() as session:
            row = await session.get(Member, (org_id, user_id))
        return None if row is None else Role(row.role)
