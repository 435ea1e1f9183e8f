"""Forge's lease writer: the decisions of the reconciler, on a real store
(SQLite, migrated) with a small in-process fake of the Kubernetes calls.

The fake only records what was asked; isolation itself is proven against a
real control plane with kubectl (``tests/e2e/test_forge.py``).
"""

from __future__ import annotations

import asyncio

import pytest

from volt.config import ForgeSettings
from volt.forge.kube import LeaseScope, MintedToken
from volt.forge.leases import Forge, ForgeError
from volt.forge.states import LeaseState
from volt.placement.gpus import GpuPool
from volt.store import Database
from volt.store.resources import ResourceStore
from volt.wire import AvailabilityQuery, LeaseCreate

HOUR = 3600.0


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeKube:
    server = "https://kube.invalid"
    ca_pem = b"-----BEGIN CERTIFICATE-----\n"

    def __init__(self) -> None:
        self.namespaces: dict[str, LeaseScope] = {}
        self.tokens: dict[str, str] = {}
        self.fail_provision = False
        self.teardowns_pending = 0
        """Teardown answers "not gone yet" this many times first."""

    def provision(self, scope: LeaseScope) -> None:
        if self.fail_provision:
            raise OSError("apiserver down")
        self.namespaces[scope.lease_id] = scope

    def mint(self, lease_id: str, kubeconfig_id: str, ttl_s: int) -> MintedToken:
        self.tokens[kubeconfig_id] = lease_id
        return MintedToken(token=f"token-{kubeconfig_id}", expires_at=1e12,
                           binding=kubeconfig_id)

    def revoke(self, lease_id: str, kubeconfig_id: str) -> None:
        self.tokens.pop(kubeconfig_id, None)

    def teardown(self, lease_id: str, nodes: list[str]) -> bool:
        if self.teardowns_pending:
            self.teardowns_pending -= 1
            return False
        self.namespaces.pop(lease_id, None)
        for kid, owner in list(self.tokens.items()):
            if owner == lease_id:
                del self.tokens[kid]
        return True


class World:
    def __init__(self, db: Database, clock: Clock, kube: FakeKube, nodes: int = 4,
                 gpus: int = 8, quota: int | None = None) -> None:
        self.db, self.clock, self.kube = db, clock, kube
        self.nodes, self.gpus, self.quota = nodes, gpus, quota
        self.inflight: dict[str, int] = {}
        self.told: dict[str, str] = {}
        """What each node was last told to hand its GPUs to."""
        self.handed: dict[str, str] | None = None
        """What each node's agent says it handed over (None: no agents answer)."""
        self.forge = self.start()

    def start(self, settings: ForgeSettings | None = None) -> Forge:
        async def quota_of(org_id: str) -> int | None:
            return self.quota

        forge = Forge(ResourceStore(self.db), GpuPool(), self.kube,
                      settings or ForgeSettings(drain_timeout_s=0.5, provision_timeout_s=30),
                      quota_of=quota_of, clock=self.clock,
                      spark_inflight=lambda node: self.inflight.get(node, 0),
                      on_assign=self.told.__setitem__,
                      handed_over=lambda node: (None if self.handed is None
                                                else self.handed.get(node, "")))
        for i in range(self.nodes):
            forge.node_seen(f"gpu-{i}", metro="fra", tier="standard",
                            gpu_names=["NVIDIA H100 80GB HBM3"] * self.gpus,
                            rack="r1", nvlink_domain=f"d{i // 2}", schedulable=True)
        return forge

    async def restart(self) -> Forge:
        """The scheduler died (its tasks with it) and a new one loads the store."""
        await self.forge.stop()
        self.forge = self.start()
        await self.forge.load()
        return self.forge

    async def settle(self) -> None:
        """One reconcile pass and the work it started, to the end."""
        for _ in range(10):
            await self.forge.reconcile()
            work = list(self.forge._work.values())
            if not work:
                return
            await asyncio.gather(*work)


def lease(count: int = 8, org: str = "org_a", hours: float = 2, *,
          starts_in: float | None = None, now: float = 1_800_000_000.0) -> LeaseCreate:
    starts = now + starts_in if starts_in is not None else None
    return LeaseCreate(org_id=org, gpu_model="H100", gpu_count=count, metro="fra",
                       starts_at=starts, ends_at=(starts or now) + hours * HOUR)


@pytest.fixture
def world(db: Database) -> World:
    return World(db, Clock(), FakeKube())


async def test_a_lease_is_placed_provisioned_and_active(world: World) -> None:
    record = await world.forge.create(lease(4))
    assert record.state == LeaseState.PROVISIONING
    assert world.forge.leased_nodes() == {record.status["placement"][0][0]: record.id}
    await world.settle()
    active = world.forge.lease(record.id)
    assert active is not None
    assert active.state == LeaseState.ACTIVE
    assert world.kube.namespaces[record.id].gpus == 4
    history = await world.forge.store.history(record.id)
    assert [(h.from_state, h.to_state) for h in history] == [
        ("", "provisioning"), ("provisioning", "active")]


async def test_fifty_racing_requests_for_twenty_gpus_exactly_twenty_win(db: Database) -> None:
    world = World(db, Clock(), FakeKube(), nodes=5, gpus=4, quota=1000)
    results = await asyncio.gather(*(world.forge.create(lease(1, org=f"org_{i % 7}"))
                                     for i in range(50)), return_exceptions=True)
    won = [r for r in results if not isinstance(r, BaseException)]
    lost = [r for r in results if isinstance(r, BaseException)]
    assert len(won) == 20
    assert all(isinstance(e, ForgeError) and e.code == "insufficient_capacity"
               and e.status == 503 for e in lost)
    taken: dict[str, int] = {}
    for record in won:
        for node, gpus in record.status["placement"]:
            taken[node] = taken.get(node, 0) + gpus
    assert taken == {f"gpu-{i}": 4 for i in range(5)}  # every GPU once, none twice


async def test_a_lease_expires_at_its_end_without_sleeping(world: World) -> None:
    record = await world.forge.create(lease(8, hours=1))
    await world.settle()
    world.clock.now += HOUR - 1
    await world.settle()
    assert world.forge.lease(record.id).state == LeaseState.ACTIVE  # type: ignore[union-attr]
    world.clock.now += 2
    world.kube.teardowns_pending = 1  # the namespace takes a pass to go
    await world.forge.reconcile()
    assert world.forge.lease(record.id).state == LeaseState.EXPIRING  # type: ignore[union-attr]
    assert world.forge.leased_nodes()  # still held while the namespace goes
    await world.settle()
    stored = await world.forge.store.get("lease", record.id)
    assert stored is not None
    assert stored.state == LeaseState.TERMINATED
    assert stored.status["ended_at"] == pytest.approx(record.created_at + HOUR + 1)
    assert world.forge.leased_nodes() == {}
    assert record.id not in world.kube.namespaces
    assert sum(row.free for row in world.forge.availability(AvailabilityQuery())) == 32


async def test_the_org_quota_counts_every_live_lease(db: Database) -> None:
    world = World(db, Clock(), FakeKube(), quota=12)
    await world.forge.create(lease(8))
    with pytest.raises(ForgeError) as refused:
        await world.forge.create(lease(8))
    assert (refused.value.code, refused.value.status) == ("gpu_quota_exceeded", 403)
    assert "quota is 12" in str(refused.value)
    await world.forge.create(lease(4))  # 12 exactly
    await world.forge.create(lease(4, org="org_b"))  # another org has its own


async def test_terminate_tears_down_and_frees_the_gpus(world: World) -> None:
    record = await world.forge.create(lease(8))
    await world.settle()
    await world.forge.terminate("org_a", record.id)
    await world.settle()
    stored = await world.forge.store.get("lease", record.id)
    assert stored is not None
    assert stored.state == LeaseState.TERMINATED
    assert stored.reason == "terminated by the tenant"
    again = await world.forge.terminate("org_a", record.id)  # idempotent
    assert again.state == LeaseState.TERMINATED
    with pytest.raises(ForgeError) as other:
        await world.forge.terminate("org_b", record.id)
    assert other.value.status == 404


async def test_a_scheduler_restart_in_every_state_loses_and_duplicates_nothing(
        world: World) -> None:
    pending = await world.forge.create(lease(8, starts_in=HOUR))
    active = await world.forge.create(lease(8))
    await world.settle()
    expiring = await world.forge.create(lease(8))
    await world.settle()
    world.kube.teardowns_pending = 100  # its namespace is slow to go
    await world.forge.terminate("org_a", expiring.id)
    await world.forge.reconcile()
    world.kube.fail_provision = True  # and the last one cannot be provisioned yet
    provisioning = await world.forge.create(lease(8))
    await world.forge.reconcile()
    await asyncio.gather(*world.forge._work.values(), return_exceptions=True)
    ids = {"pending": pending.id, "provisioning": provisioning.id, "active": active.id,
           "expiring": expiring.id}
    assert {state: world.forge.lease(i).state  # type: ignore[union-attr]
            for state, i in ids.items()} == {state: state for state in ids}
    before = world.forge.leased_nodes()
    assert len(set(before.values())) == 3

    forge = await world.restart()
    assert {state: forge.lease(i).state  # type: ignore[union-attr]
            for state, i in ids.items()} == {state: state for state in ids}
    assert forge.leased_nodes() == before  # the same GPUs, each taken once
    await forge.create(lease(8))  # the one free node
    with pytest.raises(ForgeError) as full:
        await forge.create(lease(1))
    assert full.value.code == "insufficient_capacity"
    world.kube.fail_provision = False
    world.kube.teardowns_pending = 0
    await world.settle()
    assert forge.lease(provisioning.id).state == "active"  # type: ignore[union-attr]
    assert forge.lease(expiring.id) is None
    stored = await forge.store.get("lease", expiring.id)
    assert stored is not None
    assert stored.state == "terminated"
    assert forge.lease(pending.id).state == "pending"  # type: ignore[union-attr]


async def test_a_pending_lease_starts_on_time_or_fails_for_want_of_capacity(
        world: World) -> None:
    later = await world.forge.create(lease(8, starts_in=HOUR))
    assert later.state == LeaseState.PENDING
    assert world.forge.leased_nodes() == {}
    for _ in range(4):
        await world.forge.create(lease(8))  # every GPU taken meanwhile
    world.clock.now += HOUR
    await world.settle()
    stored = await world.forge.store.get("lease", later.id)
    assert stored is not None
    assert stored.state == LeaseState.FAILED
    assert "could not start" in stored.reason


async def test_provisioning_that_keeps_failing_is_rolled_back(world: World) -> None:
    world.kube.fail_provision = True
    record = await world.forge.create(lease(8))
    await world.settle()
    assert world.forge.lease(record.id).state == LeaseState.PROVISIONING  # type: ignore[union-attr]
    world.clock.now += 31  # past provision_timeout_s
    await world.settle()
    stored = await world.forge.store.get("lease", record.id)
    assert stored is not None
    assert stored.state == LeaseState.FAILED
    assert "provisioning failed" in stored.reason
    assert world.forge.leased_nodes() == {}


async def test_spark_drains_before_provisioning_within_its_bound(world: World) -> None:
    world.inflight = {f"gpu-{i}": 3 for i in range(4)}
    record = await world.forge.create(lease(8))
    await world.forge.reconcile()
    await asyncio.sleep(0.3)
    assert world.forge.lease(record.id).state == LeaseState.PROVISIONING  # type: ignore[union-attr]
    world.inflight = {}
    await world.settle()
    assert world.forge.lease(record.id).state == LeaseState.ACTIVE  # type: ignore[union-attr]


async def test_kubeconfigs_are_minted_for_active_leases_and_revoked_one_by_one(
        world: World) -> None:
    record = await world.forge.create(lease(8))
    with pytest.raises(ForgeError) as early:
        await world.forge.mint("org_a", record.id, None)
    assert (early.value.code, early.value.status) == ("lease_not_active", 409)
    await world.settle()
    first = await world.forge.mint("org_a", record.id, None)
    second = await world.forge.mint("org_a", record.id, None)
    assert set(world.kube.tokens) == {first.kubeconfig_id, second.kubeconfig_id}
    updated = await world.forge.revoke("org_a", record.id, first.kubeconfig_id)
    assert set(world.kube.tokens) == {second.kubeconfig_id}
    revoked = {e["id"]: e["revoked_at"] for e in updated.status["kubeconfigs"]}
    assert revoked[first.kubeconfig_id] is not None
    assert revoked[second.kubeconfig_id] is None
    with pytest.raises(ForgeError) as foreign:
        await world.forge.mint("org_b", record.id, None)
    assert foreign.value.status == 404
    await world.forge.terminate("org_a", record.id)
    await world.settle()
    assert world.kube.tokens == {}  # all die with the namespace


@pytest.mark.parametrize(("command", "code"), [
    (LeaseCreate(org_id="o", gpu_model="H100", gpu_count=0, metro="fra",
                 ends_at=1_800_000_000.0 + HOUR), "invalid_gpu_count"),
    (LeaseCreate(org_id="o", gpu_model="H100", gpu_count=1, metro="fra",
                 ends_at=1_800_000_000.0 + 60), "invalid_duration"),
    (LeaseCreate(org_id="o", gpu_model="H100", gpu_count=12, metro="fra",
                 ends_at=1_800_000_000.0 + HOUR), "invalid_shape"),
    (LeaseCreate(org_id="o", gpu_model="B200", gpu_count=1, metro="fra",
                 ends_at=1_800_000_000.0 + HOUR), "invalid_shape"),
    (LeaseCreate(org_id="o", gpu_model="H100", gpu_count=1, metro="fra",
                 ends_at=1_800_000_000.0 + HOUR, egress_cidrs=["everything"]),
     "invalid_egress"),
])
async def test_requests_that_can_never_succeed_are_400s(world: World, command: LeaseCreate,
                                                        code: str) -> None:
    with pytest.raises(ForgeError) as refused:
        await world.forge.create(command)
    assert (refused.value.code, refused.value.status) == (code, 400)


async def test_provisioning_waits_for_the_agents_to_hand_their_gpus_over(
        world: World) -> None:
    world.handed = {}  # agents answer, but have not stopped their engines yet
    record = await world.forge.create(lease(16))
    nodes = [node for node, _ in record.status["placement"]]
    await world.forge.reconcile()
    await asyncio.sleep(0.5)
    assert world.forge.lease(record.id).state == LeaseState.PROVISIONING  # type: ignore[union-attr]
    assert {node: world.told[node] for node in nodes} == dict.fromkeys(nodes, record.id)
    world.handed = dict.fromkeys(nodes, record.id)
    await world.settle()
    assert world.forge.lease(record.id).state == LeaseState.ACTIVE  # type: ignore[union-attr]
    assert world.forge.assignment(nodes[0]) == record.id

    await world.forge.terminate("org_a", record.id)
    await world.settle()
    assert {node: world.told[node] for node in nodes} == dict.fromkeys(nodes, "")
    assert world.forge.assignment(nodes[0]) == ""

    # A restarted scheduler knows whom the live leases' nodes belong to.
    again = await world.forge.create(lease(8))
    (node, _), = again.status["placement"]
    world.handed = {node: again.id}
    await world.settle()
    forge = await world.restart()
    assert forge.assignment(node) == again.id
