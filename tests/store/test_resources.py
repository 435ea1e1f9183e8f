"""Durable resources in the store (SQLite, and PostgreSQL when configured):
compare-and-set transitions with history, pages, and what a writer resumes."""

from __future__ import annotations

import dataclasses

import pytest

from volt.store import Database
from volt.store.resources import ResourceStore, StaleResource


@pytest.fixture
def store(db: Database) -> ResourceStore:
    return ResourceStore(db)


async def test_a_transition_is_compare_and_set_with_its_history(store: ResourceStore) -> None:
    record = await store.create(kind="lease", id="lease-1", org_id="org_a", state="pending",
                                spec={"gpu_count": 8}, status={}, now=100.0)
    moved = await store.transition(record, event="start", to="provisioning", now=101.0,
                                   status={"placement": [["n1", 8]]})
    assert (moved.state, moved.version, moved.status) == (
        "provisioning", 2, {"placement": [["n1", 8]]})
    with pytest.raises(StaleResource):  # a second writer holding the old row loses
        await store.transition(record, event="terminate", to="terminated", now=102.0)
    await store.transition(moved, event="provisioned", to="active", now=103.0,
                           reason="provisioned")
    stored = await store.get("lease", "lease-1")
    assert stored is not None
    assert (stored.state, stored.reason, stored.version) == ("active", "provisioned", 3)
    history = await store.history("lease-1")
    assert [(h.seq, h.event, h.from_state, h.to_state) for h in history] == [
        (1, "create", "", "pending"), (2, "start", "pending", "provisioning"),
        (3, "provisioned", "provisioning", "active")]


async def test_another_orgs_or_kinds_resource_is_not_found(store: ResourceStore) -> None:
    await store.create(kind="lease", id="lease-1", org_id="org_a", state="active", spec={},
                       status={}, now=1.0)
    assert await store.get("lease", "lease-1", org_id="org_b") is None
    assert await store.get("rack", "lease-1") is None
    assert await store.get("lease", "lease-1", org_id="org_a") is not None


async def test_pages_are_newest_first_and_states_filter(store: ResourceStore) -> None:
    for i in range(5):
        await store.create(kind="lease", id=f"lease-{i}", org_id="org_a",
                           state="active" if i % 2 else "terminated", spec={}, status={},
                           now=float(i))
    await store.create(kind="lease", id="lease-b", org_id="org_b", state="active", spec={},
                       status={}, now=9.0)
    first = await store.page("lease", "org_a", limit=2)
    assert [r.id for r in first.records] == ["lease-4", "lease-3"]
    assert first.has_more
    rest = await store.page("lease", "org_a", limit=10, after="lease-3")
    assert [r.id for r in rest.records] == ["lease-2", "lease-1", "lease-0"]
    assert not rest.has_more
    active = await store.page("lease", "org_a", limit=10, states=["active"])
    assert [r.id for r in active.records] == ["lease-3", "lease-1"]
    with pytest.raises(KeyError):
        await store.page("lease", "org_a", limit=10, after="lease-b")
    live = await store.in_states("lease", ["active"])
    assert {r.id for r in live} == {"lease-1", "lease-3", "lease-b"}


def entry(n: int) -> dict[str, object]:
    return {"id": f"ev-{n}", "message": f"event {n}"}


async def test_a_resources_log_is_appended_with_its_change_and_read_newest_first(
        store: ResourceStore) -> None:
    record = await store.create(kind="fine_tuning_job", id="job-1", org_id="org_a",
                                state="queued", spec={}, status={}, now=1.0,
                                log=[entry(1), entry(2)])
    record = await store.update_status(record, {"step": 1}, 2.0, log=[entry(3)])
    with pytest.raises(StaleResource):  # a lost compare-and-set appends nothing either
        await store.update_status(dataclasses.replace(record, version=1), {"step": 9}, 2.5,
                                  log=[entry(99)])
    await store.transition(record, event="start", to="running", now=3.0, log=[entry(4)])
    page = await store.log("job-1", limit=3)
    assert [e["id"] for e in page.entries] == ["ev-4", "ev-3", "ev-2"]
    assert page.has_more
    rest = await store.log("job-1", limit=3, after="ev-2")
    assert ([e["id"] for e in rest.entries], rest.has_more) == (["ev-1"], False)
    assert rest.entries[0] == entry(1)  # as it was written
    with pytest.raises(KeyError):
        await store.log("job-1", limit=3, after="ev-99")
    assert (await store.log("job-2", limit=3)).entries == []


async def test_a_writer_may_change_the_spec_with_the_status_compare_and_set(
        store: ResourceStore) -> None:
    record = await store.create(kind="rack", id="rack-1", org_id="", state="cleaning",
                                spec={"nodes": [{"name": "n1", "bmc_password": "old"}]},
                                status={}, now=1.0)
    changed = await store.update_status(record, {"n1": "rotated"}, 2.0,
                                        spec={"nodes": [{"name": "n1", "bmc_password": "new"}]})
    stored = await store.get("rack", "rack-1")
    assert stored is not None
    assert stored.spec == changed.spec == {"nodes": [{"name": "n1", "bmc_password": "new"}]}
    assert stored.status == {"n1": "rotated"}
    with pytest.raises(StaleResource):  # the old row's holder cannot write the old spec back
        await store.update_status(record, {}, 3.0, spec=record.spec)
    kept = await store.update_status(changed, {"n1": "done"}, 4.0)  # no spec: it stays
    assert kept.spec == changed.spec
    assert (await store.get("rack", "rack-1")).spec == changed.spec  # type: ignore[union-attr]
