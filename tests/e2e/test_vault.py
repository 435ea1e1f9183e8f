"""Vault end to end: real processes (NATS, the scheduler, the API), real
Redfish BMCs (sushy-emulator, one per node), the operator's ``volt admin
racks`` and the tenant's SDK and ``volt vault`` CLI.

Two racks, two orgs: each reserves one, watches it provision node by node,
reads its signed attestation report, and releases it; the scheduler is
SIGKILLed in the middle of provisioning and of cleaning and carries on from
the steps it had stored; another org's rack, or a free one, is 404 on every
route; the last free rack is a clear capacity error. DMTF's
redfish-service-validator finds nothing wrong that the Redfish proxy adds.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
import sushy
import yaml
from support.requirements import require
from support.sushy import Bmc
from support.tls import serving_cert

from volt.protocol.vault import RedfishCredential
from volt.sdk import Client
from volt.sdk._errors import APIStatusError, VoltError
from volt.store import Database
from volt.store.resources import ResourceStore
from volt.testing import Cluster
from volt.up.nats_server import free_port

SUPPORT = Path(__file__).parents[1] / "support"

pytestmark = pytest.mark.slow
NODES = ["e1-n1", "e1-n2", "e2-n1", "e2-n2"]


@dataclass
class World:
    cluster: Cluster
    bmcs: dict[str, Bmc]
    keys: dict[str, str]
    """Org name -> an owner key."""
    tmp: Path
    proxy: str
    """The Redfish proxy's base URL (HTTPS, as Redfish clients expect)."""
    proxy_ca: Path

    @property
    def tls(self) -> ssl.SSLContext:
        """Trusts the proxy's certificate (its CA is the test's own)."""
        return ssl.create_default_context(cafile=self.proxy_ca)

    def sdk(self, org: str) -> Client:
        return Client(f"http://127.0.0.1:{self.cluster.api_port}", self.keys[org],
                      max_retries=0)

    def rack(self, org: str, rack_id: str) -> Any:
        with self.sdk(org) as volt:
            return volt.vault.get(rack_id)

    def wait(self, org: str, rack_id: str, check: Callable[[Any], bool],
             timeout_s: float = 90) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                rack = self.rack(org, rack_id)
            except APIStatusError as error:
                if error.status != 404:
                    raise
                rack = None  # cleaned and handed back: no longer the org's
            if check(rack):
                return rack
            assert time.monotonic() < deadline, (
                rack, self.cluster.services["scheduler"].log_text()[-3000:])
            time.sleep(0.2)

    def until_scheduler_answers(self, timeout_s: float = 60) -> None:
        """After a restart: wait until the scheduler takes commands again."""
        deadline = time.monotonic() + timeout_s
        with self.sdk("vault-a") as volt:
            while True:
                try:
                    volt.vault.verifier_keys()
                    return
                except APIStatusError as error:
                    if error.status != 503:
                        raise
                assert time.monotonic() < deadline, "the scheduler never came back"
                time.sleep(0.2)

    def events(self, rack_id: str) -> list[str]:
        """The rack's stored history of transitions."""
        async def read() -> list[str]:
            db = Database(self.cluster.store_url)
            try:
                return [entry.event for entry in await ResourceStore(db).history(rack_id)]
            finally:
                await db.close()

        return asyncio.run(read())

    def admin(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``volt admin ...`` as the operator runs it, on the cluster's store."""
        return subprocess.run([sys.executable, "-m", "volt", "admin", *args],
                              env=self.cluster.env({}), capture_output=True, text=True,
                              timeout=60, check=False)

    def cli(self, org: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VOLT_API_KEY": self.keys[org],
               "VOLT_BASE_URL": f"http://127.0.0.1:{self.cluster.api_port}"}
        return subprocess.run([sys.executable, "-m", "volt", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)


def rack_file(folder: Path, rack_id: str, bmcs: dict[str, Bmc], *,
              password: str | None = None) -> Path:
    lines = [f'id = "{rack_id}"', 'metro = "fra"', 'tier = "standard"', 'cleaning = "metadata"']
    for name, bmc in bmcs.items():
        if name.startswith(rack_id + "-"):
            lines += ["", "[[nodes]]", f'name = "{name}"', 'gpu_model = "H100"', "gpus = 8",
                      f'bmc_url = "{bmc.url}"', f'bmc_username = "{bmc.username}"',
                      f'bmc_password = "{password or bmc.password}"']
    path = folder / f"{rack_id}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, image_server: str,
          tiny_model: Path) -> Iterator[World]:
    root = tmp_path_factory.mktemp("vault")
    bmcs: dict[str, Bmc] = {}
    (root / "tls").mkdir()
    ca, cert, key = serving_cert(root / "tls", "redfish-proxy")
    proxy_port = free_port()
    proxy = f"https://127.0.0.1:{proxy_port}"
    try:
        for name in NODES:
            bmcs[name] = Bmc(root / "bmcs" / name, systems=[name]).start()
        with Cluster(root, engine_mode="instant", model_cache=tiny_model, extra_env={
            "VOLT_VAULT_PROXY_URL": proxy,
            "VOLT_VAULT_IMAGE_URL": image_server + "/{talos_version}/metal-amd64.iso",
            "VOLT_VAULT_REQUIRE_ATTESTATION": "0", "VOLT_VAULT_RETRY_BACKOFF_S": "0.2",
            "VOLT_VAULT_RECONCILE_INTERVAL_S": "0.2", "VOLT_VAULT_POWER_TIMEOUT_S": "30",
        }) as cluster:
            cluster.start_api()
            cluster.start_redfish_proxy(port=proxy_port, proxy_tls_cert=str(cert),
                                        proxy_tls_key=str(key))
            keys = {org: cluster.add_key(org) for org in ("vault-a", "vault-b")}
            world = World(cluster, bmcs, keys, root, proxy, ca)
            deadline = time.monotonic() + 60
            while True:
                try:
                    with world.sdk("vault-a") as volt:
                        volt.vault.list()
                    httpx.get(proxy + "/redfish/v1/", verify=world.tls, timeout=5)
                    break
                except (VoltError, httpx.HTTPError):
                    assert time.monotonic() < deadline, "the API or the proxy never answered"
                    time.sleep(0.2)
            yield world
    finally:
        for bmc in bmcs.values():
            bmc.stop()


def test_an_operator_registers_racks_only_after_every_bmc_checks_out(world: World) -> None:
    bad = world.admin("racks", "add", str(rack_file(world.tmp, "e1", world.bmcs,
                                                      password="not-it")))
    assert bad.returncode != 0
    assert "e1-n1" in bad.stderr
    assert "unauthorized" in bad.stderr
    assert "Traceback" not in bad.stderr
    for rack_id in ("e1", "e2"):
        added = world.admin("racks", "add", str(rack_file(world.tmp, rack_id, world.bmcs)))
        assert added.returncode == 0, added.stderr
        assert f"rack {rack_id}: 2 nodes, 16 GPUs, available in fra" in added.stdout
    listed = world.admin("racks", "list")
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[:2] for line in listed.stdout.splitlines()[1:]] == [
        ["e1", "available"], ["e2", "available"]]
    # No BMC password is ever printed or stored in the clear.
    db = (world.cluster.data_dir / "volt.db").read_bytes()
    for bmc in world.bmcs.values():
        assert bmc.password not in listed.stdout
        assert bmc.password.encode() not in db


def test_two_orgs_reserve_the_two_racks_and_the_third_ask_is_a_capacity_error(
        world: World) -> None:
    with world.sdk("vault-a") as volt:
        a = volt.vault.reserve("fra", gpu_model="H100", nodes=2)
    assert (a.id, a.state, a.gpu_count, a.cleaning_policy) == ("e1", "provisioning", 16,
                                                               "metadata")
    assert [n.name for n in a.nodes] == ["e1-n1", "e1-n2"]
    # The scheduler dies while the nodes are part-way through provisioning.
    world.wait("vault-a", "e1", lambda r: any(n.step for n in r.nodes), timeout_s=30)
    world.cluster.restart("scheduler", kill=True)
    world.until_scheduler_answers()
    with world.sdk("vault-b") as volt:
        b = volt.vault.reserve("fra")
        assert b.id == "e2"
        with pytest.raises(APIStatusError) as full:
            volt.vault.reserve("fra")
        assert full.value.status == 503
        assert full.value.code == "insufficient_capacity"
        with pytest.raises(APIStatusError) as none:
            volt.vault.reserve("ams")
        assert (none.value.status, none.value.code) == (400, "no_matching_rack")
        with pytest.raises(APIStatusError) as bad:
            volt.vault.reserve("fra", talos_version="v9.9.9")
        assert (bad.value.status, bad.value.param) == (400, "talos_version")
    ready_a = world.wait("vault-a", "e1", lambda r: r.state in ("ready", "failed"))
    assert ready_a.state == "ready", ready_a.reason
    # The restarted scheduler carried on: no transition was made twice.
    assert world.events("e1") == ["create", "reserve", "provision", "booted", "attested"]
    assert {(n.state, n.step, n.boot) for n in ready_a.nodes} == {
        ("booted", "power_on", "virtual_media")}
    ready_b = world.wait("vault-b", "e2", lambda r: r.state in ("ready", "failed"))
    assert ready_b.state == "ready", ready_b.reason
    for name in NODES:
        root = sushy.Sushy(world.bmcs[name].url + "/redfish/v1", auth=sushy.auth.BasicAuth(
            username=world.bmcs[name].username, password=world.bmcs[name].password))
        node = root.get_system(f"/redfish/v1/Systems/{world.bmcs[name].systems[name]}")
        assert node.power_state == sushy.PowerState.ON
    with world.sdk("vault-a") as volt:
        assert [r.id for r in volt.vault.list().data] == ["e1"]
        assert [r.id for r in volt.vault.list(state="ready").data] == ["e1"]
        assert volt.vault.list(state="cleaning").data == []


def test_another_orgs_rack_is_404_on_every_route(world: World) -> None:
    base = f"http://127.0.0.1:{world.cluster.api_port}"
    headers = {"Authorization": f"Bearer {world.keys['vault-a']}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        for method, path in (("GET", "/v1/vault/racks/e2"), ("DELETE", "/v1/vault/racks/e2"),
                             ("GET", "/v1/vault/racks/e2/attestation"),
                             ("GET", "/v1/vault/racks/nope")):
            response = http.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"]["code"] == "rack_not_found"
        bad = http.post("/v1/vault/racks", json={"metro": "fra", "gpus": 8})
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "gpus"
        assert http.get("/v1/vault/racks", params={"state": "gone"}).status_code == 400
    assert world.rack("vault-b", "e2").state == "ready"  # untouched


def test_the_attestation_report_is_signed_and_says_not_attested_without_a_verdict(
        world: World) -> None:
    keys = httpx.get(f"http://127.0.0.1:{world.cluster.api_port}"
                     "/.well-known/volt/verifier-keys", timeout=30)  # no credential needed
    assert keys.status_code == 200
    jwks = keys.json()
    assert [k["kty"] for k in jwks["keys"]] == ["OKP"]
    with world.sdk("vault-a") as volt:
        report = volt.vault.attestation("e1")
        checked = volt.vault.verified_attestation("e1")
    assert [(n.node, n.state, n.verdict) for n in report.nodes] == [
        ("e1-n1", "not_attested", None), ("e1-n2", "not_attested", None)]
    assert not report.all_passed
    assert checked["rack_id"] == "e1"
    assert checked["org_id"] == world.cluster.org_id("vault-a")
    (world.tmp / "keys.json").write_text(json.dumps(jwks))
    shown = world.cli("vault-a", "vault", "attestation", "e1", "--verify",
                      "--keys", str(world.tmp / "keys.json"))
    assert shown.returncode == 0, shown.stderr
    assert "signature verified" in shown.stderr
    assert "e1-n1" in shown.stdout
    assert "not_attested" in shown.stdout


def test_the_tenant_gets_talos_configs_for_its_nodes(world: World) -> None:
    with world.sdk("vault-a") as volt:
        config = volt.vault.talos_config("e1")
        again = volt.vault.talos_config("e1")
        one = volt.vault.talos_files("e1", node="e1-n2", format="yaml").decode()
        with pytest.raises(APIStatusError) as nobody:
            volt.vault.talos_config("e1", node="e2-n1")  # another rack's node
        assert (nobody.value.status, nobody.value.param) == (404, "node")
    assert (config.talos_version, config.endpoint) == ("v1.12.1", "https://e1-n1:6443")
    assert [(n.node, n.role) for n in config.nodes] == [("e1-n1", "controlplane"),
                                                         ("e1-n2", "worker")]
    documents = list(yaml.safe_load_all(config.nodes[1].config))
    assert documents[1] == {"apiVersion": "v1alpha1", "kind": "HostnameConfig",
                            "hostname": "e1-n2", "auto": "off"}
    assert documents[0]["machine"]["install"]["disk"] == "/dev/nvme0n1"
    # One bundle per reservation: every call gives the same cluster.
    assert yaml.safe_load(again.secrets)["cluster"] == yaml.safe_load(config.secrets)["cluster"]
    assert next(yaml.safe_load_all(one))["cluster"]["id"] == documents[0]["cluster"]["id"]
    out = world.tmp / "e1-talos"
    written = world.cli("vault-a", "vault", "talos-config", "e1", "--out", str(out))
    assert written.returncode == 0, written.stderr
    assert sorted(p.name for p in out.iterdir()) == ["e1-n1.yaml", "e1-n2.yaml", "secrets.yaml",
                                                     "talosconfig"]
    assert all(p.stat().st_mode & 0o077 == 0 for p in out.iterdir())  # keys: owner only
    # The bundle is sealed in the store, never in the clear.
    secret = yaml.safe_load(config.secrets)["secrets"]["secretboxencryptionsecret"]
    assert secret.encode() not in (world.cluster.data_dir / "volt.db").read_bytes()
    assert secret not in world.cluster.services["scheduler"].log_text()
    assert secret not in world.cluster.services["api"].log_text()


def bmc_system(world: World, name: str) -> Any:
    """A node's system as its own BMC shows it (what the tenant cannot reach)."""
    bmc = world.bmcs[name]
    root = sushy.Sushy(bmc.url + "/redfish/v1", auth=sushy.auth.BasicAuth(
        username=bmc.username, password=bmc.password))
    return root.get_system(f"/redfish/v1/Systems/{bmc.systems[name]}")


def until(check: Callable[[], bool], what: str, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_the_tenant_drives_its_nodes_through_the_redfish_proxy(world: World) -> None:
    shown = world.cli("vault-a", "vault", "redfish-credentials", "e1", "--json")
    assert shown.returncode == 0, shown.stderr
    minted = msgspec.convert(json.loads(shown.stdout), RedfishCredential)
    with world.sdk("vault-a") as volt:
        with pytest.raises(APIStatusError) as theirs:
            volt.vault.redfish_credential("e2")
        assert theirs.value.status == 404
    assert minted.endpoint == world.proxy
    assert minted.username.startswith("e1_")
    for bmc in world.bmcs.values():  # the tenant never sees a BMC's own password
        assert bmc.password != minted.password

    # sushy, as a tenant would use it: it logs in through the SessionService.
    root = sushy.Sushy(world.proxy + "/redfish/v1", username=minted.username,
                       password=minted.password, verify=str(world.proxy_ca))
    assert sorted(root.get_system_collection().members_identities) == [
        "/redfish/v1/Systems/e1-n1", "/redfish/v1/Systems/e1-n2"]
    system = root.get_system("/redfish/v1/Systems/e1-n1")
    assert system.identity == "e1-n1"
    assert system.power_state == sushy.PowerState.ON
    system.reset_system(sushy.ResetType.FORCE_OFF)
    until(lambda: bmc_system(world, "e1-n1").power_state == sushy.PowerState.OFF,
          "the power-off never reached the BMC")
    system.set_system_boot_options(sushy.BootSource.PXE,
                                   enabled=sushy.BootSourceOverrideEnabled.ONCE)
    assert bmc_system(world, "e1-n1").boot.target == sushy.BootSource.PXE
    media = system.virtual_media.get_member(system.virtual_media.members_identities[0])
    media.eject_media()
    assert not bmc_system(world, "e1-n1").virtual_media.get_member(
        bmc_system(world, "e1-n1").virtual_media.members_identities[0]).inserted

    # DMTF's redfishtool, HTTP Basic on every call.
    def redfishtool(*args: str) -> subprocess.CompletedProcess[str]:
        tool = Path(sys.executable).with_name("redfishtool")
        return subprocess.run(
            [str(tool), "-r", world.proxy.removeprefix("https://"), "-u", minted.username,
             "-p", minted.password, "-S", "Always", *args], capture_output=True, text=True,
            timeout=60, check=False)

    listed = redfishtool("Systems", "list")
    assert listed.returncode == 0, listed.stderr
    assert "e1-n1" in listed.stdout
    assert "e2-n1" not in listed.stdout
    on = redfishtool("Systems", "-I", "e1-n1", "reset", "On")
    assert on.returncode == 0, on.stderr
    until(lambda: bmc_system(world, "e1-n1").power_state == sushy.PowerState.ON,
          "redfishtool's power-on never reached the BMC")
    boot = redfishtool("Systems", "-I", "e1-n1", "setBootOverride", "Once", "Hdd")
    assert boot.returncode == 0, boot.stderr
    assert bmc_system(world, "e1-n1").boot.target == sushy.BootSource.HDD
    tag = redfishtool("Systems", "-I", "e1-n1", "setAssetTag", "mine")
    assert tag.returncode != 0  # not a tenant's to change

    # What a tenant may not do is refused, in Redfish's own error shape.
    with httpx.Client(base_url=world.proxy, verify=world.tls,
                      auth=(minted.username, minted.password), timeout=30) as http:
        for path, status in (("/redfish/v1/AccountService", 403),
                             ("/redfish/v1/AccountService/Accounts", 403),
                             ("/redfish/v1/UpdateService", 403),
                             ("/redfish/v1/Managers", 403), ("/redfish/v1/Chassis", 403),
                             ("/redfish/v1/CertificateService", 403),
                             ("/redfish/v1/Systems/e2-n1", 404),
                             (f"/redfish/v1/Systems/{world.bmcs['e1-n1'].systems['e1-n1']}",
                              404)):
            response = http.get(path)
            assert response.status_code == status, (path, response.text)
            error = response.json()["error"]
            assert error["code"].startswith("Base.")
            assert error["@Message.ExtendedInfo"][0]["MessageId"] == error["code"]
        firmware = http.post("/redfish/v1/UpdateService/Actions/UpdateService.SimpleUpdate",
                             json={"ImageURI": "http://evil.invalid/fw.bin"})
        assert firmware.status_code == 403
        patched = http.patch("/redfish/v1/Systems/e1-n1", json={"AssetTag": "x"})
        assert patched.status_code == 403
        bios = http.post("/redfish/v1/Systems/e1-n1/Bios/Actions/Bios.ResetBios", json={})
        assert bios.status_code == 403
        shown = http.get("/redfish/v1/Systems/e1-n1").json()
        assert "ManagedBy" not in shown.get("Links", {})  # the BMC itself is not shown
        assert "Chassis" not in shown.get("Links", {})
        assert f"/Systems/{world.bmcs['e1-n1'].systems['e1-n1']}" not in json.dumps(shown)
        assert http.get("/redfish/v1/Systems/e1-n1", auth=(minted.username, "wrong")
                        ).status_code == 401
    assert httpx.get(world.proxy + "/redfish/v1/Systems", verify=world.tls,
                     timeout=30).status_code == 401

    # Every call is in the tamper-evident audit log, under the tenant's org.
    def resets() -> list[Any]:
        with world.sdk("vault-a") as volt:
            return [record for _, record in volt.audit.events(
                route="/redfish/v1/Systems/{node}/Actions/ComputerSystem.Reset")]
    until(lambda: len(resets()) >= 2, "the proxied resets were not audited")
    event = resets()[0].event
    assert (event.auth_method, event.auth_id) == ("redfish", minted.id)
    assert event.resources == {"rack_id": "e1", "node": "e1-n1"}

    # Revoked: HTTP Basic and the session sushy holds both stop within a second.
    session_root = sushy.Sushy(world.proxy + "/redfish/v1", username=minted.username,
                               password=minted.password, verify=str(world.proxy_ca))
    with world.sdk("vault-a") as volt:
        rack = volt.vault.revoke_redfish_credential("e1", minted.id)
    assert rack.redfish_credentials[0].revoked_at is not None
    until(lambda: httpx.get(world.proxy + "/redfish/v1/Systems", verify=world.tls,
                            auth=(minted.username, minted.password)).status_code == 401,
          "a revoked credential still works")
    with pytest.raises(sushy.exceptions.AccessError):
        session_root.get_system_collection()


def validate(url: str, user: str, password: str, folder: Path, schemas: Path,
             ca: Path | None = None) -> dict[str, set[tuple[str, str]]]:
    """Run DMTF's redfish-service-validator against ``url``: for each resource
    it validated, the failures it found there as (property, error)."""
    validator = Path(sys.executable).with_name("rf_service_validator")
    env = {**os.environ, **({"REQUESTS_CA_BUNDLE": str(ca)} if ca else {})}
    run = subprocess.run(
        [str(validator), "--rhost", url, "--user", user, "--password", password,
         "--authtype", "Basic", "--logdir", str(folder), "--schema_directory", str(schemas),
         "--skipschema", "--timeout", "30"],
        capture_output=True, text=True, timeout=600, check=False, env=env)
    assert "PASS" in run.stdout, run.stdout + run.stderr  # it ran to its summary
    found: dict[str, set[tuple[str, str]]] = {}
    resource = ""
    for line in next(folder.rglob("RedfishServiceValidatorDebug_*.log")).read_text(
            ).splitlines():
        if " - INFO - Validating " in line:
            resource = line.split(" - INFO - Validating ", 1)[1].removesuffix("...")
            found.setdefault(resource, set())
        elif " - ERROR - FAIL - " in line:
            failure = line.split(" - ERROR - FAIL - ", 1)[1]
            where = failure.split(" (", 1)[0] if failure.startswith("/") else ""
            found[resource].add((where, failure.rsplit("): ", 1)[-1].split(":", 1)[0]))
    return found


def test_dmtfs_service_validator_finds_nothing_the_proxy_adds(world: World,
                                                             tmp_path: Path) -> None:
    """DMTF's redfish-service-validator, pointed at the proxy as a tenant would,
    and at the BMC behind it: what it fails through the proxy it fails on the
    BMC itself (sushy-emulator's own faults), and what the proxy makes — the
    service root, the session service, the systems collection — passes whole."""
    fetched = subprocess.run([str(SUPPORT / "fetch-redfish-schema")], capture_output=True,
                             text=True, timeout=600, check=False)
    if fetched.returncode != 0:
        require(f"DMTF's Redfish schemas: {fetched.stderr.strip()}")
    schemas = tmp_path / "schemas"
    shutil.copytree(fetched.stdout.strip(), schemas)
    shown = world.cli("vault-a", "vault", "redfish-credentials", "e1", "--json")
    assert shown.returncode == 0, shown.stderr
    minted = msgspec.convert(json.loads(shown.stdout), RedfishCredential)
    until(lambda: httpx.get(world.proxy + "/redfish/v1/Systems", verify=world.tls,
                            auth=(minted.username, minted.password)).status_code == 200,
          "the minted credential never worked")  # the proxy reads racks once a second
    proxied = validate(world.proxy, minted.username, minted.password, tmp_path / "proxy",
                       schemas, world.proxy_ca)
    bmc = world.bmcs["e1-n1"]
    direct = validate(bmc.url, bmc.username, bmc.password, tmp_path / "bmc", schemas)
    system = f"/redfish/v1/Systems/{bmc.systems['e1-n1']}"
    as_proxied = {resource.replace(system, "/redfish/v1/Systems/e1-n1"): failures
                  for resource, failures in direct.items()}

    assert "/redfish/v1/Systems/e1-n1" in proxied  # it walked the tenant's systems
    assert "/redfish/v1/Systems/e1-n1/VirtualMedia/Cd" in proxied
    for ours in ("/redfish/v1/", "/redfish/v1/SessionService",
                 "/redfish/v1/SessionService/Sessions", "/redfish/v1/Systems"):
        assert proxied[ours] == set(), (ours, proxied[ours])
    for resource, failures in proxied.items():
        if not resource.startswith("/redfish/v1/Systems/e1-n1"):
            continue  # e1-n2's answers come from another BMC (of the same emulator)
        added = failures - as_proxied.get(resource, set())
        assert not added, (resource, added)
        assert not any("Copyright" in error for _, error in failures)  # taken out
    # The BMC's own faults stay visible (the proxy does not paper over a BMC).
    assert ("/Status/HealthRollUp", "Unknown Property Error") in \
        proxied["/redfish/v1/Systems/e1-n1"]


def test_release_cleans_every_node_even_across_a_scheduler_kill(world: World) -> None:
    with world.sdk("vault-a") as volt:
        minted = volt.vault.redfish_credential("e1")
    shown = world.cli("vault-a", "vault", "racks", "release", "e1")
    assert shown.returncode == 0, shown.stderr
    # Release revokes every credential of the rack at once.
    until(lambda: httpx.get(world.proxy + "/redfish/v1/Systems", verify=world.tls,
                            auth=(minted.username, minted.password)).status_code == 401,
          "a released rack's credential still works", timeout_s=5)
    # Killed while the nodes are being cleaned (powering off after the reset).
    world.wait("vault-a", "e1", lambda r: r is not None and r.state == "cleaning"
               and any(n.step == "clean" or n.running == "power_off" for n in r.nodes))
    world.cluster.restart("scheduler", kill=True)
    world.wait("vault-a", "e1", lambda r: r is None)  # cleaned, and no longer org A's
    assert world.events("e1")[-3:] == ["release", "clean", "cleaned"]
    listed = world.admin("racks", "list")
    assert next(line.split()[:2] for line in listed.stdout.splitlines()[1:]) == [
        "e1", "available"]
    for name in ("e1-n1", "e1-n2"):
        root = sushy.Sushy(world.bmcs[name].url + "/redfish/v1", auth=sushy.auth.BasicAuth(
            username=world.bmcs[name].username, password=world.bmcs[name].password))
        node = root.get_system(f"/redfish/v1/Systems/{world.bmcs[name].systems[name]}")
        assert node.power_state == sushy.PowerState.OFF
        assert node.boot.target == sushy.BootSource.HDD
    # Org B takes the cleaned rack next, through the CLI, watching it come up.
    got = world.cli("vault-b", "vault", "racks", "reserve", "--metro", "fra", "--wait")
    assert got.returncode == 0, got.stderr
    assert "e1: provisioning" in got.stderr
    assert got.stdout.split("\n")[1].split()[:2] == ["e1", "ready"]
    with world.sdk("vault-b") as volt:
        volt.vault.release("e1")
    world.wait("vault-b", "e1", lambda r: r is None)
    released = world.cli("vault-b", "vault", "racks", "release", "e2", "--wait")
    assert released.returncode == 0, released.stderr
    # Progress is shown while it waits (how far it gets between polls depends
    # on the emulator's power delays).
    assert released.stderr.startswith("e2: releasing")
    assert world.admin("racks", "list").stdout.splitlines()[2].split()[:2] == [
        "e2", "available"]
