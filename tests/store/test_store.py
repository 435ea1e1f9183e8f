"""The state store, against SQLite and (when configured) PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from volt.store import Database, Inventory, SchemaOutdated
from volt.wire import GpuInfo, NodeHello


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


async def test_catalog_and_inventory(db: Database) -> None:
    inventory = Inventory(db)
    await inventory.add_models({"b", "a"})
    await inventory.add_models({"a", "c"})
    assert [card.id for card in await inventory.models()] == ["a", "b", "c"]
    hello = NodeHello(node_id="fra-1", metro="fra", tier="standard", models=["a"],
                      gpus=[GpuInfo(index=0, name="H100", uuid="GPU-1", memory_total_mib=81559)])
    await inventory.record_node(hello)
    await inventory.record_node(hello)  # a rejoin updates, never duplicates
    await inventory.record_node(NodeHello(node_id="ams-1", metro="ams", tier="spot", models=[]))
    # A restarted scheduler still knows every metro and tier it has had a node in.
    assert await inventory.places() == ({"fra", "ams"}, {"standard", "spot"})


async def test_an_older_store_upgrades_keeping_its_orgs_and_usage(tmp_path: Path) -> None:
    """A store at the spine's schema (tenants, digest keys) upgrades in place:
    tenants become orgs with their catalogs, usage is kept, old-format keys go."""
    from sqlalchemy import text

    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    try:
        await database.upgrade("0003")
        async with database.engine.begin() as connection:
            await connection.execute(text(
                "insert into tenants (id, name, spiffe_id, catalog) values "
                "('ten_1', 'acme', 'spiffe://volt.local/tenant/ten_1', '{\"metros\": [\"fra\"]}')"))
            await connection.execute(text(
                "insert into api_keys (id, tenant_id, name, prefix, digest) values "
                "('key_1', 'ten_1', 'old', 'volt_sk_live_abc', 'deadbeef')"))
            await connection.execute(text(
                "insert into usage_records (request_id, tenant_id, key_id, model, endpoint, "
                "metro, tier, pod, stream, status, prompt_tokens, completion_tokens, "
                "cached_tokens, started_unix, ended_unix, day) values ('r1', 'ten_1', 'key_1', "
                "'m', 'chat.completions', 'fra', 'standard', 'p', 0, 'completed', 3, 4, 0, 1, 2, "
                "'1970-01-01')"))
        await database.upgrade()
        async with database.engine.connect() as connection:
            orgs = (await connection.execute(text("select id, name, catalog from orgs"))).all()
            usage = (await connection.execute(
                text("select org_id, livemode, prompt_tokens from usage_records"))).all()
            keys = (await connection.execute(text("select count(*) from api_keys"))).scalar()
        assert orgs == [("ten_1", "acme", '{"metros": ["fra"]}')]
        assert usage == [("ten_1", 1, 3)]
        assert keys == 0
    finally:
        await database.close()


async def test_a_jobs_events_move_from_its_status_to_its_log_on_upgrade(tmp_path: Path) -> None:
    """Revision 0006: a fine-tuning job made before it kept its events in its
    status; they become its log, in order, and leave the status."""
    import json

    from sqlalchemy import text

    from volt.store.resources import ResourceStore

    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'old.db'}")
    events = [{"id": f"ftevent-{n}", "created_at": n, "level": "info", "message": f"m{n}",
               "type": "message", "data": {}} for n in range(3)]
    try:
        await database.upgrade("0005")
        async with database.engine.begin() as connection:
            await connection.execute(text(
                "insert into resources (id, kind, org_id, state, spec, status, reason, "
                "created_at, updated_at, version) values ('ftjob-1', 'fine_tuning_job', 'o', "
                "'running', '{}', :status, '', 1, 1, 1)"),
                {"status": json.dumps({"step": 2, "events": events})})
        await database.upgrade()
        store = ResourceStore(database)
        record = await store.get("fine_tuning_job", "ftjob-1")
        assert record is not None
        assert record.status == {"step": 2}
        assert (await store.log("ftjob-1", limit=10)).entries == events[::-1]
    finally:
        await database.close()
