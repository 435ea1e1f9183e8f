"""Node trust end to end: an agent with a (software) TPM enrols, pushes quotes,
and takes work only while its verdict passes; a node that fails is
quarantined at once."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from cryptography import x509
from joserfc.jwk import OKPKey
from support.requirements import require
from support.sushy import Bmc

from volt.attestation import event_log
from volt.attestation.policy import ApprovedVersion, Component, Policy
from volt.attestation.verifier import SignedVerdict, check_verdict
from volt.sdk import Client
from volt.store import Database
from volt.store.resources import ResourceStore
from volt.testing import Cluster
from volt.up.software_tpm import Swtpm, manufacturer_cas
from volt.vault.credentials import CredentialBox
from volt.vault.inventory import NodeEntry, RackEntry, register

BOOT = [(0, event_log.EV_S_CRTM_VERSION, b"firmware 2.3.1"),
        (7, event_log.EV_EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot=1"),
        (4, event_log.EV_EFI_BOOT_SERVICES_APPLICATION, b"systemd-boot 257"),
        (9, event_log.EV_IPL, b"vmlinuz 6.12.8")]
CHAT = {"model": "volt-tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}


def approved(data: bytes) -> list[ApprovedVersion]:
    import hashlib

    return [ApprovedVersion(version="1", digests=[hashlib.sha256(data).hexdigest()])]


@pytest.fixture(scope="module")
def trusted(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path,
            image_server: str) -> Iterator[tuple[Cluster, Swtpm]]:
    for tool in ("swtpm", "swtpm_setup", "tpm2_dictionarylockout"):
        if shutil.which(tool) is None:
            require(f"{tool} is not installed (Debian packages swtpm, swtpm-tools, tpm2-tools)")
    root = tmp_path_factory.mktemp("trusted")
    policy = Policy(name="fleet", version=1, pcrs=[0, 4, 7, 9], components={
        "firmware": Component(pcrs=[0], approved=approved(b"firmware 2.3.1")),
        "bootloader": Component(pcrs=[4], approved=approved(b"systemd-boot 257")),
        "secure_boot": Component(pcrs=[7], approved=approved(b"SecureBoot=1")),
        "kernel": Component(pcrs=[9], approved=approved(b"vmlinuz 6.12.8"))})
    (root / "policy.json").write_bytes(msgspec.json.encode(policy))
    (root / "cas.pem").write_bytes(manufacturer_cas())
    with Swtpm(root / "tpm") as tpm:
        tpm.boot(BOOT)
        with Cluster(root / "cluster", engine_mode="instant", model_cache=tiny_model,
                     extra_env={"VOLT_ATTESTATION_REQUIRED": "1",
                                # Earned SVIDs last 4 s: renewal is what keeps the node on.
                                "VOLT_ATTESTATION_NODE_SVID_LIFETIME_S": "4",
                                "VOLT_ATTESTATION_POLICY_FILE": str(root / "policy.json"),
                                "VOLT_ATTESTATION_EK_CA_FILE": str(root / "cas.pem"),
                                # Vault racks need a passing verdict (the default).
                                "VOLT_VAULT_IMAGE_URL":
                                    image_server + "/{talos_version}/metal-amd64.iso",
                                "VOLT_VAULT_RECONCILE_INTERVAL_S": "0.2"}) as cluster:
            # A TPM node joins as production ones do: it holds only an enrolment
            # SVID and earns its node SVID by its first passing attestation.
            cluster.add_agent("tpm-1", metro="fra", tpm=tpm.tcti, enrolling=True,
                              event_log=str(tpm.log_path), attestation_interval_s="0.5")
            cluster.add_agent("no-tpm-1", metro="ams")
            cluster.start_api()
            cluster.wait_routable(metro="fra", timeout_s=60)
            yield cluster, tpm


def test_an_attested_node_serves_and_one_without_a_tpm_does_not(
        trusted: tuple[Cluster, Swtpm]) -> None:
    cluster, _ = trusted
    status, _, body = cluster.request("/v1/chat/completions", {**CHAT, "volt": {"metro": "fra"}})
    assert status == 200
    assert json.loads(body)["volt"]["attestation"] == "attested"
    status, _, body = cluster.request("/v1/chat/completions", {**CHAT, "volt": {"metro": "ams"}})
    assert status == 503  # no TPM, and attestation is required


def test_the_tpm_node_earned_its_bus_svid_by_attestation(
        trusted: tuple[Cluster, Swtpm]) -> None:
    from volt.identity.workload import spiffe_id_of

    cluster, _ = trusted
    folder = Path(cluster.services["tpm-1"].env["VOLT_NATS_SVID_DIR"])
    assert spiffe_id_of((folder / "svid.pem").read_bytes()) == \
        "spiffe://volt.local/enrol/fra/tpm-1"
    earned = folder / "node" / "svid.pem"
    assert spiffe_id_of(earned.read_bytes()) == "spiffe://volt.local/node/fra/tpm-1"
    # Issued by the scheduler for a key it never saw: no private key but the node's.
    assert "bus SVID issued to an attested node" in cluster.services["scheduler"].log_text()


def test_the_earned_svid_is_renewed_under_the_running_agent(
        trusted: tuple[Cluster, Swtpm]) -> None:
    """Every passing attestation (every 0.5 s here) renews the node's SVID, which
    lasts 4 s here: after a NATS restart the node reconnects and serves, which it
    could not with the SVID it started with."""
    cluster, _ = trusted
    earned = Path(cluster.services["tpm-1"].env["VOLT_NATS_SVID_DIR"]) / "node" / "svid.pem"
    first = x509.load_pem_x509_certificate(earned.read_bytes())
    time.sleep(5)  # the first SVID has expired
    renewed = x509.load_pem_x509_certificate(earned.read_bytes())
    assert renewed.serial_number != first.serial_number
    assert renewed.not_valid_after_utc > first.not_valid_after_utc
    assert first.not_valid_after_utc < datetime.now(UTC)
    cluster.nats.restart()
    cluster.wait_routable(metro="fra", timeout_s=30)
    status, _, body = cluster.request("/v1/chat/completions", {**CHAT, "volt": {"metro": "fra"}})
    assert status == 200, body


def test_a_vault_rack_is_ready_only_once_its_node_passed_measured_boot(
        trusted: tuple[Cluster, Swtpm], tmp_path: Path) -> None:
    """A rack whose node is ``tpm-1`` (its agent stands in for the attester a
    Vault node's Talos image carries): provisioned through a real BMC, then
    ready on a real quote's passing verdict, and the tenant's report carries
    that verdict, signed, checkable offline."""
    cluster, _ = trusted
    with Bmc(tmp_path / "bmc", systems=["tpm-1"]) as bmc:
        async def register_rack() -> None:
            db = Database(cluster.store_url)
            try:
                await register(ResourceStore(db), CredentialBox.from_config(cluster.config),
                               RackEntry(id="t1", metro="fra", cleaning="metadata", nodes=[
                                   NodeEntry(name="tpm-1", gpu_model="H100", gpus=8,
                                             bmc_url=bmc.url, bmc_username=bmc.username,
                                             bmc_password=bmc.password)]), now=time.time())
            finally:
                await db.close()

        asyncio.run(register_rack())
        key = cluster.add_key("vault-t")
        with Client(f"http://127.0.0.1:{cluster.api_port}", key, max_retries=0) as volt:
            assert volt.vault.reserve("fra").id == "t1"
            deadline = time.monotonic() + 60
            while (rack := volt.vault.get("t1")).state not in ("ready", "failed"):
                assert time.monotonic() < deadline, rack
                time.sleep(0.2)
            assert rack.state == "ready", rack.reason
            assert rack.reason == "every node passed measured boot"
            jwks = volt.vault.verifier_keys()
            report = volt.vault.verified_attestation("t1", jwks)
            volt.vault.release("t1")
    (node,) = report["nodes"]
    assert (node["node"], node["state"]) == ("tpm-1", "passed")
    verdict = msgspec.convert(node["verdict"], SignedVerdict)
    assert verdict.verdict.passed
    assert verdict.verdict.policy == "fleet@1"
    assert verdict.verdict.matched["kernel"] == "1"
    assert {"0", "4", "7", "9"} <= set(verdict.verdict.pcrs)  # the policy's, quoted
    assert verdict.verdict.time_ms / 1000 >= rack.nodes[0].booted_at - 1  # of this boot
    # The verdict inside is the verifier's own, checkable with the published key too.
    public = OKPKey.import_key(msgspec.to_builtins(jwks)["keys"][0]).get_op_key("verify")
    assert check_verdict(verdict, public)


def test_a_node_that_fails_attestation_never_joins_the_bus(
        trusted: tuple[Cluster, Swtpm], tmp_path: Path) -> None:
    cluster, _ = trusted
    with Swtpm(tmp_path / "evil-tpm") as evil:
        evil.boot([*BOOT[:-1], (9, event_log.EV_IPL, b"vmlinuz 6.12.8-evil")])  # off-policy
        agent = cluster.add_agent("tpm-evil", metro="fra", tpm=evil.tcti, enrolling=True,
                                  event_log=str(evil.log_path))
        deadline = time.monotonic() + 30
        while "waiting for attestation to earn the bus SVID" not in agent.log_text():
            assert time.monotonic() < deadline, agent.log_text()[-2000:]
            time.sleep(0.2)
        # The verdict's reason reaches the node (after a retry, if its first
        # enrolment attempt failed: the agent retries with backoff).
        while "kernel" not in agent.log_text():
            assert time.monotonic() < deadline + 30, agent.log_text()[-2000:]
            time.sleep(0.2)
        folder = Path(agent.env["VOLT_NATS_SVID_DIR"])
        assert not (folder / "node").exists()
        # It could never say hello: the scheduler's view does not know it at all.
        assert "tpm-evil" not in {node.node_id for node in asyncio.run(cluster.view()).nodes}
        cluster.services.pop("tpm-evil").stop()


def test_a_node_whose_log_stops_replaying_is_quarantined(trusted: tuple[Cluster, Swtpm]) -> None:
    cluster, tpm = trusted
    lying, _ = event_log.build([*BOOT[:-1], (9, event_log.EV_IPL, b"vmlinuz 6.12.8-evil")])
    tpm.log_path.write_bytes(lying)
    tampered = time.monotonic()
    while time.monotonic() - tampered < 20:
        status, _, _ = cluster.request("/v1/chat/completions", {**CHAT, "volt": {"metro": "fra"}})
        if status == 503:
            break
        time.sleep(0.05)
    quarantined_after = time.monotonic() - tampered
    assert status == 503
    # The next quote (every 0.5 s) fails, and the view drops the node at once.
    assert quarantined_after < 5, quarantined_after
    log = cluster.services["scheduler"].log_text()
    assert "attestation failed: node quarantined" in log
    tpm.log_path.write_bytes(tpm.log)  # the honest log again: it serves again
    cluster.wait_routable(metro="fra", timeout_s=20)
