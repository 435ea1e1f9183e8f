"""Vault's rack writer on a real store (SQLite, migrated) driving real Redfish
BMCs (sushy-emulator, one per node; its power changes land 1-11 s after they
are asked): registration, the whole lifecycle, the race for the last rack,
cleaning that cannot erase, a BMC that dies, a writer that restarts,
measured boot gating readiness, and cleaning that rotates each BMC's
password (a writer killed between telling the BMC and storing it included).

The same writer inside a real scheduler process, killed with SIGKILL, behind
the API, the SDK and the CLI: ``tests/e2e/test_vault.py``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import sushy
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.sushy import Bmc

from volt.attestation.verifier import Finding, SignedVerdict, Verdict, key_id, sign_verdict
from volt.config import VaultSettings
from volt.store import Database
from volt.store.resources import ResourceRecord, ResourceStore
from volt.vault.credentials import CredentialBox, CredentialError
from volt.vault.inventory import (
    KIND,
    NodeEntry,
    RackEntry,
    RegistrationError,
    operator_transition,
    register,
)
from volt.vault.racks import Vault, VaultError
from volt.vault.redfish import RedfishBmc
from volt.vault.report import ReportInvalid, public_jwk, verify_report
from volt.vault.states import RackEvent, RackState
from volt.wire import RackReserve

pytestmark = pytest.mark.slow
KEY = bytes(range(32))
WAIT_S = 90.0
"""Provisioning and cleaning wait on the emulator's 1-11 s power changes."""


@pytest.fixture(scope="module")
def bmcs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Bmc]]:
    """Node name -> its own BMC (one system each, as in a real rack)."""
    root = tmp_path_factory.mktemp("bmcs")
    names = ["r1-n1", "r1-n2", "r2-n1", "r2-n2"]
    started: dict[str, Bmc] = {}
    try:
        for name in names:
            started[name] = Bmc(root / name, systems=[name]).start()
        yield started
    finally:
        for bmc in started.values():
            bmc.stop()


def settings(image_server: str, **changes: object) -> VaultSettings:
    base: dict[str, object] = {
        "image_url": image_server + "/{talos_version}/metal-amd64.iso",
        "power_timeout_s": 30.0, "node_attempts": 2, "retry_backoff_s": 0.2,
        "require_attestation": False, "reconcile_interval_s": 0.2, "bmc_timeout_s": 5.0}
    return VaultSettings(**{**base, **changes})  # type: ignore[arg-type]


def entry(rack_id: str, bmcs: dict[str, Bmc], *, cleaning: str = "metadata",
          password: str | None = None) -> RackEntry:
    nodes = [NodeEntry(name=name, gpu_model="H100", gpus=8, bmc_url=bmc.url,
                       bmc_username=bmc.username, bmc_password=password or bmc.password)
             for name, bmc in bmcs.items()]
    return RackEntry(id=rack_id, metro="fra", tier="standard", cleaning=cleaning,  # type: ignore[arg-type]
                     nodes=nodes)


def of(bmcs: dict[str, Bmc], rack: str) -> dict[str, Bmc]:
    return {name: bmc for name, bmc in bmcs.items() if name.startswith(rack + "-")}


def system(bmc: Bmc) -> sushy.resources.system.system.System:
    """The node's system as sushy itself reads it (to check what Vault did)."""
    root = sushy.Sushy(bmc.url + "/redfish/v1", auth=sushy.auth.BasicAuth(
        username=bmc.username, password=bmc.password))
    return root.get_system(f"/redfish/v1/Systems/{next(iter(bmc.systems.values()))}")


def reserve(org: str, **fields: object) -> RackReserve:
    return RackReserve(org_id=org, metro="fra", **fields)  # type: ignore[arg-type]


@pytest.fixture
async def store(db: Database) -> ResourceStore:
    return ResourceStore(db)


class Running:
    """A Vault with its reconcile loop running (stopped at the end)."""

    def __init__(self, vault: Vault) -> None:
        self.vault = vault
        self.task = asyncio.create_task(vault.run())

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)
        await self.vault.stop()


@pytest.fixture
async def running() -> AsyncIterator[Callable[[Vault], Running]]:
    started: list[Running] = []

    def start(vault: Vault) -> Running:
        started.append(Running(vault))
        return started[-1]

    yield start
    for run in started:
        await run.stop()


async def wait_for(store: ResourceStore, rack_id: str, check: Callable[[ResourceRecord], bool],
                   timeout_s: float = WAIT_S) -> ResourceRecord:
    deadline = time.monotonic() + timeout_s
    while True:
        record = await store.get(KIND, rack_id)
        assert record is not None
        if check(record):
            return record
        if time.monotonic() > deadline:
            raise AssertionError(f"rack {rack_id} is {record.state} ({record.reason}): "
                                 f"{record.status.get('nodes')}")
        await asyncio.sleep(0.2)


def in_state(*states: RackState) -> Callable[[ResourceRecord], bool]:
    return lambda record: record.state in states


async def test_registration_checks_every_bmc_and_seals_the_passwords(
        store: ResourceStore, bmcs: dict[str, Bmc], tmp_path: Path) -> None:
    box = CredentialBox(KEY)
    with pytest.raises(RegistrationError) as refused:
        await register(store, box, entry("r1", of(bmcs, "r1"), password="wrong"), now=1.0)
    assert "r1-n1" in str(refused.value)
    assert "unauthorized" in str(refused.value)
    assert await store.get(KIND, "r1") is None  # nothing stored
    gone = Bmc(tmp_path / "gone", systems=["gone-n1"])  # never started: nothing answers
    with pytest.raises(RegistrationError) as absent:
        await register(store, box, entry("gone", {"gone-n1": gone}), now=1.0)
    assert "unreachable" in str(absent.value)

    record = await register(store, box, entry("r1", of(bmcs, "r1")), now=1.0)
    assert record.state == RackState.AVAILABLE
    assert record.org_id == ""
    node = record.spec["nodes"][0]
    assert node["virtual_media"]
    assert node["system_id"] == bmcs["r1-n1"].systems["r1-n1"]
    # The store holds no password in the clear, only what opens under the key,
    # for that node of that rack.
    database = (tmp_path / "volt.db").read_bytes()
    assert bmcs["r1-n1"].password.encode() not in database
    assert box.open(node["bmc_password"], rack_id="r1", node="r1-n1") == bmcs["r1-n1"].password
    with pytest.raises(CredentialError):
        box.open(node["bmc_password"], rack_id="r1", node="r1-n2")
    with pytest.raises(CredentialError):
        CredentialBox(bytes(32)).open(node["bmc_password"], rack_id="r1", node="r1-n1")
    with pytest.raises(RegistrationError, match="registered already"):
        await register(store, box, entry("r1", of(bmcs, "r1")), now=2.0)
    with pytest.raises(RegistrationError, match="already in another rack"):
        await register(store, box, entry("r9", of(bmcs, "r1")), now=2.0)


async def test_a_rack_is_provisioned_in_parallel_then_cleaned_back_to_available(
        store: ResourceStore, bmcs: dict[str, Bmc], image_server: str,
        running: Callable[[Vault], Running]) -> None:
    box = CredentialBox(KEY)
    await register(store, box, entry("r1", of(bmcs, "r1")), now=1.0)
    vault = Vault(store, settings(image_server), box)
    running(vault)
    rack = await vault.reserve(reserve("org-a", gpu_model="H100", nodes=2))
    assert (rack.id, rack.state, rack.org_id) == ("r1", RackState.PROVISIONING, "org-a")

    ready = await wait_for(store, "r1", in_state(RackState.READY, RackState.FAILED))
    assert ready.state == RackState.READY, ready.reason
    assert "not attested" in ready.reason  # never shown as passed
    for name in ("r1-n1", "r1-n2"):
        node = ready.status["nodes"][name]
        assert (node["state"], node["step"], node["boot"]) == ("booted", "power_on",
                                                              "virtual_media")
        booted = system(bmcs[name])
        assert booted.power_state == sushy.PowerState.ON
        assert booted.boot.target == sushy.BootSource.CD
        media = booted.virtual_media.get_member(booted.virtual_media.members_identities[0])
        assert media.inserted
        assert media.image.endswith("/v1.12.1/metal-amd64.iso")

    released = await vault.release("org-a", "r1")
    assert released.state == RackState.RELEASING
    available = await wait_for(store, "r1", in_state(RackState.AVAILABLE,
                                                     RackState.MAINTENANCE))
    assert available.state == RackState.AVAILABLE, available.reason
    assert available.org_id == ""  # nobody's now: org A no longer finds it
    assert await store.get(KIND, "r1", org_id="org-a") is None
    for name in ("r1-n1", "r1-n2"):
        cleaned = system(bmcs[name])
        assert cleaned.power_state == sushy.PowerState.OFF
        assert cleaned.boot.target == sushy.BootSource.HDD
        media = cleaned.virtual_media.get_member(cleaned.virtual_media.members_identities[0])
        assert not media.inserted
        steps = {s["step"]: s["outcome"] for s in available.status["last_cleaning"][name]}
        assert steps["boot_override_cleared"] == "done"
        assert steps["bios_reset"].startswith("not supported")  # the emulator has no BIOS
    events = [entry.event for entry in await store.history("r1")]
    assert events == ["create", "reserve", "provision", "booted", "attested", "release",
                      "clean", "cleaned"]


async def test_two_orgs_racing_for_the_last_rack_get_exactly_one(
        store: ResourceStore, bmcs: dict[str, Bmc], image_server: str) -> None:
    box = CredentialBox(KEY)
    await register(store, box, entry("r1", of(bmcs, "r1")), now=1.0)
    vault = Vault(store, settings(image_server), box)  # not run: no BMC is driven
    results = await asyncio.gather(vault.reserve(reserve("org-a")),
                                   vault.reserve(reserve("org-b")), return_exceptions=True)
    won = [r for r in results if isinstance(r, ResourceRecord)]
    lost = [r for r in results if isinstance(r, VaultError)]
    assert len(won) == 1
    assert len(lost) == 1
    assert (lost[0].status, lost[0].code) == (503, "insufficient_capacity")
    assert (await store.get(KIND, "r1")).org_id == won[0].org_id  # type: ignore[union-attr]

    with pytest.raises(VaultError) as nothing:
        await vault.reserve(reserve("org-b", gpu_model="B200"))
    assert (nothing.value.status, nothing.value.code) == (400, "no_matching_rack")
    with pytest.raises(VaultError) as bigger:
        await vault.reserve(reserve("org-b", nodes=3))
    assert bigger.value.code == "no_matching_rack"
    with pytest.raises(VaultError) as talos:
        await vault.reserve(reserve("org-b", talos_version="v0.1.0"))
    assert (talos.value.status, talos.value.param) == (400, "talos_version")
    with pytest.raises(VaultError) as theirs:
        await vault.release("org-c", "r1")
    assert theirs.value.status == 404
    await vault.stop()


async def test_a_rack_whose_bmcs_cannot_erase_goes_to_maintenance_not_back_to_anyone(
        store: ResourceStore, bmcs: dict[str, Bmc], image_server: str,
        running: Callable[[Vault], Running]) -> None:
    box = CredentialBox(KEY)
    await register(store, box, entry("r2", of(bmcs, "r2"), cleaning="erase"), now=1.0)
    vault = Vault(store, settings(image_server), box)
    running(vault)
    await vault.reserve(reserve("org-a"))
    await wait_for(store, "r2", in_state(RackState.READY))
    await vault.release("org-a", "r2")
    held = await wait_for(store, "r2", in_state(RackState.MAINTENANCE, RackState.AVAILABLE))
    assert held.state == RackState.MAINTENANCE
    # The emulator lists no drives: erasing is "not supported", said plainly.
    assert "disks not erased (not supported" in held.reason
    assert held.org_id == "org-a"  # the tenant still sees why its rack is held
    node = held.status["nodes"]["r2-n1"]
    assert node["state"] == "failed"
    assert any(s["step"] == "secure_erase" and s["outcome"].startswith("not supported")
               for s in node["steps"])
    # An operator who has seen to it sends it back through cleaning.
    await operator_transition(store, "r2", RackEvent.REPAIRED, "disks swapped", now=time.time())
    again = await wait_for(store, "r2", lambda r: r.state == RackState.MAINTENANCE
                           and r.version > held.version + 2)
    assert "disks not erased" in again.reason
    with pytest.raises(RegistrationError, match="cannot take"):
        await operator_transition(store, "r2", RackEvent.MAINTAIN, "", now=time.time())


async def test_a_bmc_that_dies_mid_provisioning_fails_the_rack_with_the_reason(
        store: ResourceStore, tmp_path: Path, image_server: str,
        running: Callable[[Vault], Running]) -> None:
    box = CredentialBox(KEY)
    with Bmc(tmp_path / "d1", systems=["d-n1"]) as healthy, \
            Bmc(tmp_path / "d2", systems=["d-n2"]) as dying:
        await register(store, box, entry("d", {"d-n1": healthy, "d-n2": dying}), now=1.0)
        vault = Vault(store, settings(image_server), box)
        running(vault)
        await vault.reserve(reserve("org-a"))
        await wait_for(store, "d", lambda r: r.status["nodes"]["d-n2"].get("step") in
                       ("power_off", "boot_override"), timeout_s=30)
        dying.stop()
        failed = await wait_for(store, "d", in_state(RackState.FAILED, RackState.ATTESTING,
                                                     RackState.READY))
    assert failed.state == RackState.FAILED
    assert "node d-n2" in failed.reason
    assert "did not answer" in failed.reason
    node = failed.status["nodes"]["d-n2"]
    assert node["state"] == "failed"
    assert node["attempts"] == 2
    assert "unreachable" in node["last_error"]
    assert failed.status["nodes"]["d-n1"]["state"] == "booted"  # the others went on


async def test_a_restarted_writer_carries_on_from_the_stored_step(
        store: ResourceStore, bmcs: dict[str, Bmc], image_server: str,
        running: Callable[[Vault], Running]) -> None:
    box = CredentialBox(KEY)
    await register(store, box, entry("r1", of(bmcs, "r1")), now=1.0)
    first = running(Vault(store, settings(image_server), box))
    await first.vault.reserve(reserve("org-a"))
    mid = await wait_for(store, "r1", lambda r: any(
        n.get("step") == "boot_override" for n in r.status["nodes"].values()), timeout_s=30)
    await first.stop()  # the writer dies between two steps of a node
    assert mid.state == RackState.PROVISIONING
    second = running(Vault(store, settings(image_server), box))
    ready = await wait_for(store, "r1", in_state(RackState.READY, RackState.FAILED))
    assert ready.state == RackState.READY, ready.reason
    events = [entry.event for entry in await store.history("r1")]
    assert events == ["create", "reserve", "provision", "booted", "attested"]
    await second.vault.release("org-a", "r1")
    await wait_for(store, "r1", in_state(RackState.AVAILABLE))


async def test_cleaning_rotates_each_bmc_password_even_across_a_writer_killed_mid_change(
        store: ResourceStore, tmp_path: Path, image_server: str,
        running: Callable[[Vault], Running]) -> None:
    box = CredentialBox(KEY)
    patched, hold = threading.Event(), threading.Event()

    class DiesAfterThePatch(RedfishBmc):
        """The writer's BMC handle that stops for good once the BMC has the new
        password, before Vault stored it (as a SIGKILL there would)."""

        def rotate_password(self, username: str, password: str) -> str:
            outcome = super().rotate_password(username, password)
            if self.url.endswith(str(ports["a-n2"])):
                patched.set()
                hold.wait(60)
            return outcome

    def dying_connect(url: str, user: str, password: str, verify: bool) -> RedfishBmc:
        return DiesAfterThePatch(url, user, password, verify=verify, timeout_s=5.0)

    with Bmc(tmp_path / "a1", systems=["a-n1"], accounts=True) as one, \
            Bmc(tmp_path / "a2", systems=["a-n2"], accounts=True) as two:
        ports = {"a-n1": one.port, "a-n2": two.port}
        await register(store, box, entry("a", {"a-n1": one, "a-n2": two}), now=1.0)
        first = running(Vault(store, settings(image_server), box, connect=dying_connect))
        await first.vault.reserve(reserve("org-a"))
        await wait_for(store, "a", in_state(RackState.READY))
        await first.vault.release("org-a", "a")
        assert await asyncio.to_thread(patched.wait, WAIT_S)
        await first.stop()  # a-n2's BMC has its new password; the store does not
        mid = await store.get(KIND, "a")
        assert mid is not None
        assert mid.state == RackState.CLEANING
        assert mid.status["nodes"]["a-n2"]["pending_password"]
        assert not two.accepts(two.password)
        hold.set()

        second = running(Vault(store, settings(image_server), box))
        available = await wait_for(store, "a", in_state(RackState.AVAILABLE,
                                                        RackState.MAINTENANCE))
        assert available.state == RackState.AVAILABLE, available.reason
        for node, bmc in (("a-n1", one), ("a-n2", two)):
            stored = next(n for n in available.spec["nodes"] if n["name"] == node)
            rotated = box.open(stored["bmc_password"], rack_id="a", node=node)
            assert rotated != bmc.password
            assert bmc.accepts(rotated)
            assert not bmc.accepts(bmc.password)  # what anyone knew before is worthless
            steps = {s["step"]: s["outcome"] for s in available.status["last_cleaning"][node]}
            assert steps["credentials_rotated"] == "done"
        # Volt goes on driving the BMCs with what it stored: the next tenant's rack.
        await second.vault.reserve(reserve("org-b"))
        ready = await wait_for(store, "a", in_state(RackState.READY, RackState.FAILED))
        assert ready.state == RackState.READY, ready.reason


class Verdicts:
    """What the scheduler's attestation service would hold: signed verdicts."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        self.latest: dict[str, SignedVerdict] = {}

    def give(self, node: str, *, passed: bool, at: float | None = None) -> None:
        findings = [] if passed else [Finding(component="kernel",
                                              reason="kernel digest not in the policy")]
        verdict = Verdict(node_id=node, passed=passed, time_ms=int((at or time.time()) * 1000),
                          policy="talos@1", nonce="ab" * 16, ak_name="000b" + "cd" * 32,
                          pcrs={"0": "11" * 32, "4": "22" * 32, "7": "33" * 32},
                          matched={"kernel": "talos-v1.12.1"} if passed else {},
                          findings=findings)
        self.latest[node] = sign_verdict(verdict, self.key, key_id(self.key))


async def test_a_rack_is_ready_only_once_every_node_passed_measured_boot(
        store: ResourceStore, bmcs: dict[str, Bmc], image_server: str,
        running: Callable[[Vault], Running]) -> None:
    box = CredentialBox(KEY)
    await register(store, box, entry("r1", of(bmcs, "r1")), now=1.0)
    verdicts = Verdicts()
    verdicts.give("r1-n1", passed=True, at=100.0)  # an earlier boot's: does not count
    vault = Vault(store, settings(image_server, require_attestation=True), box,
                  signing_key=verdicts.key, verdict_of=verdicts.latest.get)
    running(vault)
    await vault.reserve(reserve("org-a"))
    attesting = await wait_for(store, "r1", in_state(RackState.ATTESTING, RackState.FAILED))
    assert attesting.state == RackState.ATTESTING
    jwks = vault.verifier_keys()
    report = verify_report(await vault.attestation_report("org-a", "r1"), jwks)
    assert [n["state"] for n in report["nodes"]] == ["not_attested", "not_attested"]
    assert not report["all_passed"]
    await asyncio.sleep(1.0)
    assert (await store.get(KIND, "r1")).state == RackState.ATTESTING  # type: ignore[union-attr]

    verdicts.give("r1-n1", passed=True)
    verdicts.give("r1-n2", passed=True)
    ready = await wait_for(store, "r1", in_state(RackState.READY, RackState.FAILED))
    assert ready.state == RackState.READY
    assert ready.reason == "every node passed measured boot"
    token = await vault.attestation_report("org-a", "r1")
    report = verify_report(token, jwks)
    assert report["all_passed"]
    assert report["rack_id"] == "r1"
    assert report["state"] == "ready"
    node = report["nodes"][0]
    assert node["state"] == "passed"
    assert node["verdict"]["verdict"]["pcrs"]["7"] == "33" * 32
    assert node["verdict"]["verdict"]["matched"] == {"kernel": "talos-v1.12.1"}
    # Offline checks: a changed byte, or another key, and the report is refused.
    header, payload, signature = token.split(".")
    forged = ".".join((header, payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1],
                       signature))
    with pytest.raises(ReportInvalid):
        verify_report(forged, jwks)
    with pytest.raises(ReportInvalid):
        verify_report(token, {"keys": [public_jwk(Ed25519PrivateKey.generate())
                                       | {"kid": jwks["keys"][0]["kid"]}]})
    with pytest.raises(VaultError) as theirs:
        await vault.attestation_report("org-b", "r1")
    assert theirs.value.status == 404
    await vault.release("org-a", "r1")
    await wait_for(store, "r1", in_state(RackState.AVAILABLE))


async def attesting_rack(store: ResourceStore, rack_id: str, booted_at: float
                         ) -> ResourceRecord:
    """A rack stored as provisioning left it (no BMC needed to decide on verdicts)."""
    nodes = [{"name": f"{rack_id}-n{i}", "gpu_model": "H100", "gpus": 8} for i in (1, 2)]
    return await store.create(
        kind=KIND, id=rack_id, org_id="org-a", state=RackState.ATTESTING,
        spec={"metro": "fra", "tier": "standard", "cleaning": "erase", "nodes": nodes},
        status={"attesting_at": booted_at, "talos_version": "v1.12.1",
                "nodes": {n["name"]: {"state": "booted", "booted_at": booted_at}
                          for n in nodes}}, now=booted_at)


async def test_a_failed_verdict_or_none_in_time_fails_the_rack(
        store: ResourceStore, image_server: str) -> None:
    verdicts = Verdicts()
    now = [1_800_000_000.0]
    vault = Vault(store, settings(image_server, require_attestation=True,
                                  attest_timeout_s=600.0), CredentialBox(KEY),
                  signing_key=verdicts.key, verdict_of=verdicts.latest.get,
                  clock=lambda: now[0])
    rack = await attesting_rack(store, "a1", now[0])
    verdicts.give("a1-n1", passed=True, at=now[0] + 5)
    verdicts.give("a1-n2", passed=False, at=now[0] + 5)
    assert await vault._attest(rack)
    failed = await store.get(KIND, "a1")
    assert failed is not None
    assert failed.state == RackState.FAILED
    assert failed.reason == ("node a1-n2 failed measured boot (kernel: kernel digest not in "
                             "the policy)")

    slow = await attesting_rack(store, "a2", now[0])
    now[0] += 599
    assert not await vault._attest(slow)  # still within the window: wait
    now[0] += 2
    assert await vault._attest(slow)
    late = await store.get(KIND, "a2")
    assert late is not None
    assert late.state == RackState.FAILED
    assert late.reason == "no passing measured boot within 600 s from a2-n1, a2-n2"
    await vault.stop()
