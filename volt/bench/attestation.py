"""``volt bench attestation``: quote verifications per second on one core.

Evidence is built in process in exactly the TPM's formats (``TPMT_PUBLIC``
of an RSA-2048 restricted signing key, ``TPMS_ATTEST`` of a quote over PCRs
0, 4, 7 and 9, an RSASSA-SHA256 ``TPMT_SIGNATURE``, a TCG2 event log), so
the verifier does everything it does for a real node — issue the nonce,
parse, check the signature and qualified name, the nonce, the PCR digest,
parse and replay the event log, apply the policy, sign the verdict — with no
TPM in the loop (a TPM would be the bottleneck: swtpm quotes take
milliseconds). The evidence's formats are the ones the swtpm tests check
against a real TPM.
"""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from volt.attestation import event_log
from volt.attestation.policy import ApprovedVersion, Component, Policy
from volt.attestation.tpm2_structures import (
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SENSITIVE_DATA_ORIGIN,
    SIGN_ENCRYPT,
    TPM_ALG_NULL,
    TPM_ALG_RSA,
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    TPM_GENERATED_VALUE,
    TPM_RH_ENDORSEMENT,
    TPM_ST_ATTEST_QUOTE,
    USER_WITH_AUTH,
    parse_public,
    pcr_digest,
)
from volt.attestation.verifier import EnrolledNode, Evidence, Verifier

BOOT = [(0, event_log.EV_S_CRTM_VERSION, b"firmware 2.3.1"),
        (0, event_log.EV_EFI_PLATFORM_FIRMWARE_BLOB, b"firmware volume"),
        (7, event_log.EV_EFI_VARIABLE_DRIVER_CONFIG, b"SecureBoot=1"),
        *[(4, event_log.EV_EFI_BOOT_SERVICES_APPLICATION, f"loader stage {i}".encode())
          for i in range(3)],
        *[(9, event_log.EV_IPL, f"kernel part {i}".encode()) for i in range(20)]]
PCRS = [0, 4, 7, 9]


def _ak_public(key: rsa.RSAPrivateKey) -> bytes:
    numbers = key.public_key().public_numbers()
    attributes = (FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH
                  | RESTRICTED | SIGN_ENCRYPT)
    modulus = numbers.n.to_bytes(256, "big")
    return (struct.pack(">HHI", TPM_ALG_RSA, TPM_ALG_SHA256, attributes) + struct.pack(">H", 0)
            + struct.pack(">H", TPM_ALG_NULL) + struct.pack(">HH", TPM_ALG_RSASSA, TPM_ALG_SHA256)
            + struct.pack(">HI", 2048, 0) + struct.pack(">H", 256) + modulus)


def _sized(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def _quote(key: rsa.RSAPrivateKey, ak_public: bytes, nonce: bytes,
           pcrs: dict[int, bytes]) -> tuple[bytes, bytes]:
    signer = parse_public(ak_public).qualified_name(TPM_RH_ENDORSEMENT.to_bytes(4, "big"))
    bitmap = bytearray(3)
    for pcr in pcrs:
        bitmap[pcr // 8] |= 1 << (pcr % 8)
    attest = (struct.pack(">IH", TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE) + _sized(signer)
              + _sized(nonce) + struct.pack(">QIIB", 123456, 7, 0, 1) + struct.pack(">Q", 1)
              + struct.pack(">I", 1) + struct.pack(">HB", TPM_ALG_SHA256, 3) + bytes(bitmap)
              + _sized(pcr_digest([pcrs[p] for p in sorted(pcrs)])))
    signature = key.sign(attest, padding.PKCS1v15(), hashes.SHA256())
    return attest, struct.pack(">HH", TPM_ALG_RSASSA, TPM_ALG_SHA256) + _sized(signature)


def _measure(verifications: int, *, same_boot: bool) -> dict[str, Any]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ak_public = _ak_public(key)
    log, events = event_log.build(BOOT)
    replayed = event_log.parse(log).replay()
    pcrs = {pcr: replayed.get(pcr, bytes(32)) for pcr in PCRS}

    def approved(pcr: int) -> list[ApprovedVersion]:
        digests = [e.digests[TPM_ALG_SHA256].hex() for e in events if e.pcr == pcr]
        return [ApprovedVersion(version="1", digests=digests)]

    policy = Policy(name="bench", version=1, pcrs=PCRS, components={
        name: Component(pcrs=[pcr], approved=approved(pcr))
        for name, pcr in (("firmware", 0), ("bootloader", 4), ("secure_boot", 7),
                          ("kernel", 9))})
    verifier = Verifier(policy=policy, signing_key=Ed25519PrivateKey.generate())
    node = EnrolledNode("bench-node", ak_public)
    cpu_s = 0.0
    passed = 0
    for _ in range(verifications):
        if not same_boot:
            verifier._logs.clear()  # as if every log were new: parsed and replayed each time
            verifier._evaluations.clear()
        nonce = verifier.challenge("bench-node")
        # Making the quote is the TPM's work, not the verifier's: not timed.
        attest, signature = _quote(key, ak_public, nonce, pcrs)
        evidence = Evidence(attest=attest, signature=signature, pcrs=pcrs, event_log=log)
        started = time.process_time()
        passed += verifier.verify(node, evidence).verdict.passed
        cpu_s += time.process_time() - started
    if passed != verifications:
        raise RuntimeError(f"only {passed} of {verifications} verified")
    return {"same_boot": same_boot, "verifications": verifications, "cpu_s": cpu_s,
            "per_s_per_core": verifications / cpu_s, "us_each": cpu_s / verifications * 1e6}


def run_attestation_bench(*, verifications: int, json_path: Path | None) -> dict[str, Any]:
    rows = [_measure(verifications, same_boot=False), _measure(verifications, same_boot=True)]
    for row in rows:
        what = ("a node re-attesting the same boot (its log's replay kept)" if row["same_boot"]
                else f"a new {len(BOOT)}-event log each time, parsed and replayed")
        print(f"{verifications} quote verifications, {what}: {row['us_each']:.0f} µs of CPU "
              f"each, {row['per_s_per_core']:,.0f} per second per core")
    result = {"events_per_log": len(BOOT), "rows": rows,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=1))
    return result
