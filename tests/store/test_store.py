"""The state store, against SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import update

from volt.store import ApiKeys, Database, Inventory, SchemaOutdated
from volt.store.schema import ApiKey
from volt.wire import GpuInfo, NodeHello


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'volt.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
async def db(store_url: str) -> AsyncIterator[Database]:
    database = Database(store_url)
    await database.upgrade()
    try:
        yield database
    finally:
        await database.close()


async def test_an_unmigrated_store_is_refused_clearly(tmp_path: Path) -> None:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}")
    try:
        with pytest.raises(SchemaOutdated, match="volt db upgrade"):
            await database.check_current()
        await database.upgrade()
        await database.check_current()
        await database.upgrade()  # idempotent
    finally:
        await database.close()


async def test_keys_are_stored_only_as_digests(db: Database) -> None:
    keys = ApiKeys(db)
    issued = await keys.create("acme", "ci")
    assert issued.key.startswith("volt_sk_live_")
    principal = await keys.verify(issued.key)
    assert principal is not None
    assert principal.tenant_name == "acme"
    assert principal.spiffe_id == f"spiffe://volt.local/tenant/{principal.tenant_id}"
    async with db.session() as session:
        row = await session.get(ApiKey, issued.id)
        assert row is not None
        assert issued.key not in (row.digest, row.prefix, row.name)
        assert len(row.prefix) < len(issued.key) // 2


async def test_unknown_and_revoked_keys_do_not_verify(db: Database) -> None:
    keys = ApiKeys(db)
    issued = await keys.create("acme", "ci")
    assert await keys.verify(issued.key + "x") is None
    async with db.session() as session, session.begin():
        await session.execute(
            update(ApiKey).where(ApiKey.id == issued.id).values(revoked_at=datetime.now(UTC))
        )
    assert await keys.verify(issued.key) is None


async def test_a_tenant_has_one_identity_however_many_keys(db: Database) -> None:
    keys = ApiKeys(db)
    first, second = await keys.create("acme", "a"), await keys.create("acme", "b")
    assert first.tenant_id == second.tenant_id
    with pytest.raises(ValueError, match="volt_sk_live_"):
        await keys.create("acme", "bad", key="sk-not-ours")


async def test_catalog_and_inventory(db: Database) -> None:
    inventory = Inventory(db)
    await inventory.add_models({"b", "a"})
    await inventory.add_models({"a", "c"})
    assert [card.id for card in await inventory.models()] == ["a", "b", "c"]
    hello = NodeHello(node_id="fra-1", metro="fra", tier="standard", models=["a"],
                      gpus=[GpuInfo(index=0, name="H100", uuid="GPU-1", memory_total_mib=81559)])
    await inventory.record_node(hello)
    await inventory.record_node(hello)  # a rejoin updates, never duplicates


async def test_a_tenants_catalog_travels_with_its_keys(db: Database) -> None:
    from volt.store import EVERYTHING, Catalog

    keys = ApiKeys(db)
    issued = await keys.create("sovereign-gmbh", "k")
    principal = await keys.verify(issued.key)
    assert principal is not None
    assert principal.catalog == EVERYTHING
    limited = Catalog(models=frozenset({"volt-tiny"}), metros=frozenset({"fra"}))
    await keys.set_catalog("sovereign-gmbh", limited)
    principal = await keys.verify(issued.key)
    assert principal is not None
    assert principal.catalog == limited
    assert principal.catalog.allows_model("volt-tiny")
    assert not principal.catalog.allows_model("other")
    await keys.set_catalog("sovereign-gmbh", EVERYTHING)
    principal = await keys.verify(issued.key)
    assert principal is not None
    assert principal.catalog == EVERYTHING
