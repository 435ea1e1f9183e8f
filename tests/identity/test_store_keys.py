"""API keys, orgs and members in the store, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from volt.identity.api_key_format import parse_key
from volt.identity.api_keys import ApiKeys
from volt.identity.keyring import Keyring
from volt.identity.orgs import Orgs
from volt.identity.principal import Role
from volt.store import EVERYTHING, Catalog, Database


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'volt.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def store(store_url: str, tmp_path: Path) -> AsyncIterator[tuple[ApiKeys, Orgs]]:
    database = Database(store_url)
    await database.upgrade()
    try:
        yield ApiKeys(database, Keyring(tmp_path / "secrets").api_key_hmac()), Orgs(database)
    finally:
        await database.close()


async def test_keys_are_looked_up_by_id_and_matched_by_keyed_hash(
    store: tuple[ApiKeys, Orgs], tmp_path: Path,
) -> None:
    keys, orgs = store
    org = await orgs.ensure("acme")
    issued = await keys.create(org.id, "ci")
    parsed = parse_key(issued.key)
    lookup = await keys.lookup(parsed.key_id)
    assert lookup is not None
    assert lookup.org_name == "acme"
    assert keys.matches(parsed, lookup.hash)
    assert parsed.secret not in lookup.hash
    assert issued.record.prefix.startswith("volt_sk_live_")
    assert parsed.secret not in issued.record.prefix
    # Under another keyring's HMAC key, the stored hash matches nothing.
    elsewhere = ApiKeys(keys.db, Keyring(tmp_path / "other").api_key_hmac())
    assert not elsewhere.matches(parsed, lookup.hash)


async def test_pages_revocation_and_isolation(store: tuple[ApiKeys, Orgs]) -> None:
    keys, orgs = store
    acme, other = await orgs.ensure("acme"), await orgs.ensure("other")
    made = [(await keys.create(acme.id, f"k{i}")).record.id for i in range(5)]
    foreign = (await keys.create(other.id, "theirs")).record.id
    first, more = await keys.page(acme.id, limit=2)
    second, more2 = await keys.page(acme.id, limit=2, after=first[-1].id)
    third, more3 = await keys.page(acme.id, limit=2, after=second[-1].id)
    assert (more, more2, more3) == (True, True, False)
    listed = [k.id for k in first + second + third]
    assert sorted(listed) == sorted(made)
    assert len(set(listed)) == 5
    assert await keys.get(acme.id, foreign) is None
    assert await keys.revoke(acme.id, foreign) is None
    with pytest.raises(LookupError):
        await keys.page(acme.id, limit=2, after=foreign)
    revoked = await keys.revoke(acme.id, made[0])
    assert revoked is not None
    assert revoked.revoked_at is not None


async def test_catalogs_and_oidc_memberships(store: tuple[ApiKeys, Orgs]) -> None:
    keys, orgs = store
    org = await orgs.ensure("sovereign-gmbh")
    issued = await keys.create(org.id, "k")
    assert (await keys.lookup(issued.record.id)).catalog == EVERYTHING  # type: ignore[union-attr]
    limited = Catalog(models=frozenset({"volt-tiny"}), metros=frozenset({"fra"}))
    await orgs.set_catalog("sovereign-gmbh", limited)
    assert (await keys.lookup(issued.record.id)).catalog == limited  # type: ignore[union-attr]

    user = await orgs.ensure_user("https://idp.example", "alice|1", "alice@example.com")
    assert user == await orgs.ensure_user("https://idp.example", "alice|1")
    await orgs.sync_oidc_roles(user, {"sovereign-gmbh": Role.ADMIN, "labs": Role.VIEWER})
    assert {m.org_name: m.role for m in await orgs.memberships(user)} == {
        "sovereign-gmbh": Role.ADMIN, "labs": Role.VIEWER}
    await orgs.set_member(org.id, user, Role.OWNER)  # a manual role outlives group changes
    await orgs.sync_oidc_roles(user, {})
    assert {m.org_name: m.role for m in await orgs.memberships(user)} == {
        "sovereign-gmbh": Role.OWNER}
