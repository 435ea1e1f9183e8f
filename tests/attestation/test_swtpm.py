"""Attestation against a real (software) TPM: enrolment by credential
activation, and the verifier on good and bad evidence, with tpm2-tools'
``tpm2_checkquote`` as the oracle on every case it can judge."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from support.requirements import require

from volt.attestation import event_log
from volt.attestation.ek import load_cas
from volt.attestation.enrolment import Enrolment, EnrolmentRefused
from volt.attestation.policy import ApprovedVersion, Component, Policy
from volt.attestation.verifier import EnrolledNode, Evidence, Verifier, check_verdict
from volt.up.software_tpm import Swtpm, manufacturer_cas

BOOT = [
    (0, event_log.EV_S_CRTM_VERSION, b"firmware 2.3.1"),
    (0, event_log.EV_EFI_PLATFORM_FIRMWARE_BLOB, b"firmware volume"),
    (7, event_log.EV_EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot=1"),
    (4, event_log.EV_EFI_BOOT_SERVICES_APPLICATION, b"systemd-boot 257"),
    (9, event_log.EV_IPL, b"vmlinuz 6.12.8"),
]
PCRS = [0, 4, 7, 9]


def digests(*data: bytes) -> list[str]:
    return [hashlib.sha256(d).hexdigest() for d in data]


def policy(kernel: bytes = b"vmlinuz 6.12.8") -> Policy:
    return Policy(name="fleet", version=1, pcrs=PCRS, components={
        "firmware": Component(pcrs=[0], approved=[
            ApprovedVersion(version="2.3.0", digests=digests(b"older", b"firmware volume")),
            ApprovedVersion(version="2.3.1", digests=digests(b"firmware 2.3.1",
                                                             b"firmware volume"))]),
        "secure_boot": Component(pcrs=[7], approved=[
            ApprovedVersion(version="on", digests=digests(b"SecureBoot=1"))]),
        "bootloader": Component(pcrs=[4], approved=[
            ApprovedVersion(version="257", digests=digests(b"systemd-boot 257"))]),
        "kernel": Component(pcrs=[9], approved=[
            ApprovedVersion(version="6.12", digests=digests(kernel))]),
    })


@pytest.fixture(scope="module")
def swtpm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swtpm]:
    for tool in ("swtpm", "swtpm_setup", "tpm2_checkquote"):
        if shutil.which(tool) is None:
            require(f"{tool} is not installed (Debian packages swtpm, swtpm-tools, tpm2-tools)")
    with Swtpm(tmp_path_factory.mktemp("swtpm")) as tpm:
        tpm.boot(BOOT)
        yield tpm


@pytest.fixture
def tpm(swtpm: Swtpm) -> Iterator[object]:
    from volt.attestation.tpm import Tpm

    with Tpm(swtpm.tcti) as opened:
        yield opened


@pytest.fixture
def node(tpm: object) -> EnrolledNode:
    """The node, enrolled the way the scheduler enrols it."""
    enrolment = Enrolment(load_cas(manufacturer_cas()))
    ek_public, certificate = tpm.endorsement()  # type: ignore[attr-defined]
    ak_public = tpm.attestation_key()  # type: ignore[attr-defined]
    challenge = enrolment.begin("gpu-1", ek_public=ek_public, ek_certificate=certificate,
                                ak_public=ak_public)
    credential = tpm.activate(challenge.credential_blob, challenge.secret)  # type: ignore[attr-defined]
    return EnrolledNode("gpu-1", enrolment.complete("gpu-1", credential))


class Clock:
    now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def verifier(**kwargs: object) -> Verifier:
    settings = {"policy": policy(), "signing_key": Ed25519PrivateKey.generate(),
                "clock": Clock()}
    settings.update(kwargs)
    return Verifier(**settings)  # type: ignore[arg-type]


def evidence(tpm: object, nonce: bytes, log: bytes) -> Evidence:
    quote = tpm.quote(nonce, PCRS)  # type: ignore[attr-defined]
    return Evidence(attest=quote.attest, signature=quote.signature, pcrs=quote.pcrs,
                    event_log=log)


def checkquote(tmp: Path, ak_public: bytes, proof: Evidence, nonce: bytes) -> bool:
    """tpm2-tools' verdict on signature and nonce: the oracle."""
    (tmp / "ak.pub").write_bytes(ak_public)
    (tmp / "quote.msg").write_bytes(proof.attest)
    (tmp / "quote.sig").write_bytes(proof.signature)
    result = subprocess.run(["tpm2_checkquote", "-u", str(tmp / "ak.pub"), "-m",
                             str(tmp / "quote.msg"), "-s", str(tmp / "quote.sig"), "-g",
                             "sha256", "-q", nonce.hex()], capture_output=True, timeout=30)
    return result.returncode == 0


def reasons(signed: object) -> list[tuple[str, str]]:
    return [(f.component, f.reason) for f in signed.verdict.findings]  # type: ignore[attr-defined]


def test_a_good_quote_passes_and_the_verdict_is_signed(swtpm: Swtpm, tpm: object,
                                                       node: EnrolledNode,
                                                       tmp_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    check = verifier(signing_key=key)
    nonce = check.challenge("gpu-1")
    proof = evidence(tpm, nonce, swtpm.log)
    signed = check.verify(node, proof)
    assert signed.verdict.passed, reasons(signed)
    assert signed.verdict.matched == {"firmware": "2.3.1", "secure_boot": "on",
                                      "bootloader": "257", "kernel": "6.12"}
    assert signed.verdict.policy == "fleet@1"
    assert check_verdict(signed, key.public_key())
    assert checkquote(tmp_path, node.ak_public, proof, nonce)


def test_a_tampered_pcr_fails(swtpm: Swtpm, tpm: object, node: EnrolledNode) -> None:
    check = verifier()
    proof = evidence(tpm, check.challenge("gpu-1"), swtpm.log)
    forged = Evidence(attest=proof.attest, signature=proof.signature,
                      pcrs={**proof.pcrs, 9: bytes(32)}, event_log=proof.event_log)
    assert reasons(check.verify(node, forged))[0][0] == "pcrs"


def test_a_reused_or_stale_nonce_fails(swtpm: Swtpm, tpm: object, node: EnrolledNode,
                                       tmp_path: Path) -> None:
    clock = Clock()
    check = verifier(clock=clock)
    nonce = check.challenge("gpu-1")
    proof = evidence(tpm, nonce, swtpm.log)
    assert check.verify(node, proof).verdict.passed
    replayed = check.verify(node, proof)
    assert not replayed.verdict.passed
    assert reasons(replayed)[0][0] == "nonce"
    stale_nonce = check.challenge("gpu-1")
    stale = evidence(tpm, stale_nonce, swtpm.log)
    clock.now += 61
    assert reasons(check.verify(node, stale))[0] == (
        "nonce", "stale: issued 61 s ago (at most 60 s)")
    unknown = evidence(tpm, b"\x07" * 32, swtpm.log)
    assert reasons(check.verify(node, unknown))[0][0] == "nonce"
    assert not checkquote(tmp_path, node.ak_public, unknown, b"\x08" * 32)


def test_a_quote_by_another_key_fails(swtpm: Swtpm, tpm: object, node: EnrolledNode,
                                      tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
                                      ) -> None:
    from volt.attestation.tpm import Tpm

    check = verifier()
    nonce = check.challenge("gpu-1")
    with Swtpm(tmp_path_factory.mktemp("other-tpm")) as other, Tpm(other.tcti) as other_tpm:
        other.boot(BOOT)
        proof = evidence(other_tpm, nonce, other.log)
    signed = check.verify(node, proof)
    assert reasons(signed)[0] == ("signature", "the quote is not signed by the node's "
                                               "attestation key")
    assert not checkquote(tmp_path, node.ak_public, proof, nonce)


def test_an_event_log_that_does_not_replay_fails(swtpm: Swtpm, tpm: object,
                                                 node: EnrolledNode) -> None:
    check = verifier()
    lying_log, _ = event_log.build([*BOOT[:-1], (9, event_log.EV_IPL, b"vmlinuz 6.12.8-evil")])
    signed = check.verify(node, evidence(tpm, check.challenge("gpu-1"), lying_log))
    assert reasons(signed) == [("event_log", "replaying the event log does not give PCR 9's "
                                             "quoted value")]


def test_a_component_outside_the_policy_fails_and_no_policy_refuses(
        swtpm: Swtpm, tpm: object, node: EnrolledNode) -> None:
    check = verifier(policy=policy(kernel=b"vmlinuz 6.13.0"))
    signed = check.verify(node, evidence(tpm, check.challenge("gpu-1"), swtpm.log))
    assert [component for component, _ in reasons(signed)] == ["kernel"]
    assert signed.verdict.matched == {"firmware": "2.3.1", "secure_boot": "on",
                                      "bootloader": "257"}
    refusing = verifier(policy=None)
    signed = refusing.verify(node, evidence(tpm, refusing.challenge("gpu-1"), swtpm.log))
    assert reasons(signed)[0][0] == "policy"


def test_enrolment_refuses_a_wrong_credential_and_a_foreign_ca(tpm: object) -> None:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ek_public, certificate = tpm.endorsement()  # type: ignore[attr-defined]
    ak_public = tpm.attestation_key()  # type: ignore[attr-defined]
    enrolment = Enrolment(load_cas(manufacturer_cas()))
    enrolment.begin("gpu-2", ek_public=ek_public, ek_certificate=certificate,
                    ak_public=ak_public)
    with pytest.raises(EnrolmentRefused, match="does not match"):
        enrolment.complete("gpu-2", b"\0" * 32)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other maker")])
    now = datetime.datetime.now(datetime.UTC)
    foreign = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
               .public_key(key.public_key()).serial_number(1)
               .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
               .sign(key, hashes.SHA256()))
    elsewhere = Enrolment(load_cas(foreign.public_bytes(serialization.Encoding.PEM)))
    with pytest.raises(EnrolmentRefused, match="does not chain"):
        elsewhere.begin("gpu-2", ek_public=ek_public, ek_certificate=certificate,
                        ak_public=ak_public)
    with pytest.raises(EnrolmentRefused, match="not a restricted"):
        enrolment.begin("gpu-2", ek_public=ek_public, ek_certificate=certificate,
                        ak_public=ek_public)  # the EK is a decryption key, not an AK


def test_a_reboot_fails_until_attested_afresh(swtpm: Swtpm, node: EnrolledNode) -> None:
    from volt.attestation.tpm import Tpm

    check = verifier()
    with Tpm(swtpm.tcti) as before:
        assert check.verify(node, evidence(before, check.challenge("gpu-1"),
                                           swtpm.log)).verdict.passed
    swtpm.reboot()
    log = swtpm.boot(BOOT)
    with Tpm(swtpm.tcti) as after:
        signed = check.verify(node, evidence(after, check.challenge("gpu-1"), log))
        assert reasons(signed)[0][0] == "boot"
        assert "rebooted" in reasons(signed)[0][1]
        fresh = check.verify(node, evidence(after, check.challenge("gpu-1"), log),
                             expect_new_boot=True)
        assert fresh.verdict.passed, reasons(fresh)


def test_a_quote_vouches_for_the_one_key_it_was_bound_to(swtpm: Swtpm, tpm: object,
                                                         node: EnrolledNode) -> None:
    """The quote that earns a node its bus SVID: its qualifying data binds the
    verifier's nonce to the public key to be certified."""
    from volt.attestation.verifier import binding

    check = verifier()
    key = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    other = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def bound(nonce: bytes, vouched: bytes, claimed: bytes) -> Evidence:
        proof = evidence(tpm, binding(nonce, vouched), swtpm.log)
        return msgspec.structs.replace(proof, bound_key=claimed, nonce=nonce)

    nonce = check.challenge("gpu-1")
    assert check.verify(node, bound(nonce, key, key)).verdict.passed
    nonce = check.challenge("gpu-1")
    assert reasons(check.verify(node, bound(nonce, key, other)))[0] == (
        "nonce", "the quote does not vouch for the key to be certified")
    # A quote made with the bare nonce does not vouch for any key.
    nonce = check.challenge("gpu-1")
    unbound = msgspec.structs.replace(evidence(tpm, nonce, swtpm.log), bound_key=key, nonce=nonce)
    assert reasons(check.verify(node, unbound))[0][0] == "nonce"
