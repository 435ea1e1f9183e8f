"""The verifier: a node's evidence in, a signed, structured verdict out. Pure
Python: no TPM on the verifier's side.

Checks, each producing a ``Finding`` (component, reason, severity) when it
fails (Keylime's failure events are the model, not a bare boolean):

1. the quote's structure (magic ``TPM_GENERATED_VALUE``, type quote);
2. its signature, by the node's enrolled attestation key (RSASSA or ECDSA,
   SHA-256), and the signer's qualified name is that key's (a key in the
   endorsement hierarchy, whose reset counters are not obfuscated);
3. the nonce: one this verifier issued to this node, used once, not older
   than ``nonce_ttl_s``;
4. the PCR selection covers the policy's PCRs (SHA-256 bank) and the PCR
   values sent hash to the quoted digest;
5. the event log parses and its replay gives exactly those PCR values;
6. reboots: a reset count other than the last verified one fails until the
   node is attested afresh from its new boot (``expect_new_boot``);
7. the reference policy: every component matches an approved version.

Unknown policy, unknown node, anything unparseable: refuse. The verdict is
signed with the verifier's Ed25519 key (``SignedVerdict``), so it can be
handed to tenants and checked offline.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from volt.attestation import event_log
from volt.attestation.policy import Policy, evaluate
from volt.attestation.tpm2_structures import (
    DECRYPT,
    FIXED_PARENT,
    FIXED_TPM,
    RESTRICTED,
    SENSITIVE_DATA_ORIGIN,
    SIGN_ENCRYPT,
    TPM_ALG_ECC,
    TPM_ALG_ECDSA,
    TPM_ALG_RSA,
    TPM_ALG_RSASSA,
    TPM_ALG_SHA256,
    TPM_ECC_NIST_P256,
    TPM_RH_ENDORSEMENT,
    PublicKey,
    StructureError,
    parse_attest,
    parse_public,
    parse_signature,
    pcr_digest,
)
from volt.keyid import public_key_id

Severity = Literal["info", "warning", "critical"]
LOG_CACHE = 4096
"""Parsed event logs kept (one per distinct boot in the fleet, roughly)."""
AK_REQUIRED = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | RESTRICTED | SIGN_ENCRYPT


class Finding(msgspec.Struct, frozen=True, kw_only=True):
    component: str
    """What failed: quote, signature, nonce, pcrs, event_log, boot, policy, or a
    policy component (firmware, bootloader, kernel, secure_boot)."""
    reason: str
    severity: Severity = "critical"


class Verdict(msgspec.Struct, frozen=True, kw_only=True):
    node_id: str
    passed: bool
    time_ms: int
    policy: str
    """``name@version`` of the policy applied."""
    nonce: str
    ak_name: str
    reset_count: int = 0
    restart_count: int = 0
    pcrs: dict[str, str] = {}
    """PCR index -> SHA-256 value, as quoted."""
    matched: dict[str, str] = {}
    """Component -> the approved version it matched."""
    findings: list[Finding] = []


class SignedVerdict(msgspec.Struct, frozen=True, kw_only=True):
    verdict: Verdict
    key_id: str
    signature: str
    """Ed25519 over the verdict's canonical JSON, hex."""


_json = msgspec.json.Encoder(order="deterministic")


def key_id(key: Ed25519PrivateKey) -> str:
    return public_key_id(key.public_key())


def sign_verdict(verdict: Verdict, key: Ed25519PrivateKey, signer: str) -> SignedVerdict:
    return SignedVerdict(verdict=verdict, key_id=signer,
                         signature=key.sign(_json.encode(verdict)).hex())


def check_verdict(signed: SignedVerdict, public_key: object) -> bool:
    try:
        public_key.verify(bytes.fromhex(signed.signature), _json.encode(signed.verdict))  # type: ignore[attr-defined]
    except (InvalidSignature, ValueError):
        return False
    return True


class Evidence(msgspec.Struct, frozen=True, kw_only=True):
    """What a node sends for one challenge (pushed over its NATS connection)."""

    attest: bytes
    """The quote's ``TPMS_ATTEST``."""
    signature: bytes
    """Its ``TPMT_SIGNATURE``."""
    pcrs: dict[int, bytes]
    """The SHA-256 values of the quoted PCRs, as the node read them."""
    event_log: bytes
    bound_key: bytes = b""
    """A public key (DER SubjectPublicKeyInfo) the quote vouches for: the node
    asks for it to be certified (its bus SVID). Then the quote's qualifying data
    is ``binding(nonce, bound_key)`` rather than the nonce itself."""
    nonce: bytes = b""
    """With ``bound_key``: the nonce the binding was made with."""


def binding(nonce: bytes, bound_key: bytes) -> bytes:
    """The qualifying data of a quote that vouches for ``bound_key``: only the
    TPM that holds the AK could have signed it, in this challenge, for this key."""
    return hashlib.sha256(b"volt svid binding\x00" + nonce + bound_key).digest()


@dataclass
class EnrolledNode:
    """A node whose attestation key was enrolled (credential activation passed)."""

    node_id: str
    ak_public: bytes
    last_reset_count: int | None = None
    last_restart_count: int | None = None
    _parsed: PublicKey | None = None

    @property
    def ak(self) -> PublicKey:
        """The AK's public area, parsed once (``StructureError`` if it cannot be)."""
        if self._parsed is None:
            self._parsed = parse_public(self.ak_public)
        return self._parsed


def check_ak(public: PublicKey) -> str | None:
    """Why this key cannot be an attestation key (None: it can)."""
    if public.attributes & AK_REQUIRED != AK_REQUIRED or public.attributes & DECRYPT:
        return "it is not a restricted, TPM-bound signing key"
    if public.name_alg != TPM_ALG_SHA256:
        return "its name algorithm is not SHA-256"
    return None


def _verify_signature(public: PublicKey, message: bytes, raw: bytes) -> bool:
    signature = parse_signature(raw)
    if signature.hash_alg != TPM_ALG_SHA256:
        return False
    try:
        if public.key_type == TPM_ALG_RSA and signature.alg == TPM_ALG_RSASSA:
            key = rsa.RSAPublicNumbers(public.rsa_exponent,
                                       int.from_bytes(public.rsa_modulus, "big")).public_key()
            key.verify(signature.rsa, message, padding.PKCS1v15(), hashes.SHA256())
            return True
        if public.key_type == TPM_ALG_ECC and signature.alg == TPM_ALG_ECDSA \
                and public.ecc_curve == TPM_ECC_NIST_P256:
            key_ec = ec.EllipticCurvePublicNumbers(
                int.from_bytes(public.ecc_x, "big"), int.from_bytes(public.ecc_y, "big"),
                ec.SECP256R1()).public_key()
            der = encode_dss_signature(int.from_bytes(signature.ecdsa_r, "big"),
                                       int.from_bytes(signature.ecdsa_s, "big"))
            key_ec.verify(der, message, ec.ECDSA(hashes.SHA256()))
            return True
    except (InvalidSignature, ValueError):
        return False
    return False


@dataclass
class Verifier:
    policy: Policy | None
    """None: no valid policy is loaded, and every node is refused."""
    signing_key: Ed25519PrivateKey
    nonce_ttl_s: float = 60.0
    clock: Callable[[], float] = time.time
    _nonces: dict[bytes, tuple[str, float]] = field(default_factory=dict)
    _logs: dict[bytes, tuple[event_log.EventLog, dict[int, bytes]]] = field(default_factory=dict)
    _evaluations: dict[tuple[str, bytes], tuple[dict[str, str], dict[str, str]]] = field(
        default_factory=dict)
    key_id: str = ""

    def __post_init__(self) -> None:
        self.key_id = key_id(self.signing_key)

    def challenge(self, node_id: str) -> bytes:
        """A fresh nonce for ``node_id``: good once, for ``nonce_ttl_s``."""
        now = self.clock()
        for nonce, (_, issued) in list(self._nonces.items()):
            if now - issued > self.nonce_ttl_s:
                del self._nonces[nonce]
        nonce = secrets.token_bytes(32)
        self._nonces[nonce] = (node_id, now)
        return nonce

    def verify(self, node: EnrolledNode, evidence: Evidence, *,
               expect_new_boot: bool = False) -> SignedVerdict:
        findings: list[Finding] = []
        matched: dict[str, str] = {}
        attest = None
        nonce = b""
        try:
            attest = parse_attest(evidence.attest)
            nonce = attest.extra_data
            findings += self._signature(node, evidence, attest.qualified_signer)
            if evidence.bound_key:
                if attest.extra_data != binding(evidence.nonce, evidence.bound_key):
                    findings.append(Finding(component="nonce", reason="the quote does not "
                                            "vouch for the key to be certified"))
                nonce = evidence.nonce
            findings += self._nonce(node.node_id, nonce)
            findings += self._pcrs(evidence, attest)
            if not findings:
                log, replayed = self._replayed(evidence.event_log)
                findings += self._replay(replayed, evidence)
            if not findings:  # a log that does not replay says nothing true
                findings += self._boot(node, attest.reset_count, expect_new_boot)
                if self.policy is None:
                    findings.append(Finding(component="policy", reason="no valid reference "
                                            "policy is loaded: every node is refused"))
                else:
                    matched, missed = self._evaluated(self.policy, evidence.event_log, log)
                    findings += [Finding(component=name, reason=reason)
                                 for name, reason in missed.items()]
        except StructureError as exc:
            findings.append(Finding(component="quote" if attest is None else "event_log",
                                    reason=f"unparseable: {exc}"))
        passed = not any(f.severity == "critical" for f in findings)
        if passed and attest is not None:
            node.last_reset_count, node.last_restart_count = attest.reset_count, \
                attest.restart_count
        try:
            ak_name = node.ak.name.hex()
        except StructureError:
            ak_name = ""
        verdict = Verdict(
            node_id=node.node_id, passed=passed, time_ms=int(self.clock() * 1000),
            policy=self.policy.label if self.policy else "", nonce=nonce.hex(),
            ak_name=ak_name, reset_count=attest.reset_count if attest else 0,
            restart_count=attest.restart_count if attest else 0,
            pcrs={str(i): v.hex() for i, v in sorted(evidence.pcrs.items())},
            matched=matched, findings=findings)
        return sign_verdict(verdict, self.signing_key, self.key_id)

    def _signature(self, node: EnrolledNode, evidence: Evidence,
                   qualified_signer: bytes) -> list[Finding]:
        try:
            public = node.ak
        except StructureError as exc:
            return [Finding(component="signature", reason=f"enrolled key unreadable: {exc}")]
        problem = check_ak(public)
        if problem:
            return [Finding(component="signature", reason=f"the enrolled key: {problem}")]
        if not _verify_signature(public, evidence.attest, evidence.signature):
            return [Finding(component="signature",
                            reason="the quote is not signed by the node's attestation key")]
        expected = public.qualified_name(TPM_RH_ENDORSEMENT.to_bytes(4, "big"))
        if qualified_signer != expected:
            return [Finding(component="signature", reason="the quote names another signer "
                            "(not the enrolled key in the endorsement hierarchy)")]
        return []

    def _nonce(self, node_id: str, nonce: bytes) -> list[Finding]:
        issued = self._nonces.pop(nonce, None)  # single use, whatever follows
        if issued is None:
            return [Finding(component="nonce", reason="not a nonce this verifier issued, "
                            "or one already used")]
        owner, at = issued
        if owner != node_id:
            return [Finding(component="nonce", reason="a nonce issued to another node")]
        if self.clock() - at > self.nonce_ttl_s:
            return [Finding(component="nonce", reason=f"stale: issued {self.clock() - at:.0f} s "
                            f"ago (at most {self.nonce_ttl_s:.0f} s)")]
        return []

    def _pcrs(self, evidence: Evidence, attest: object) -> list[Finding]:
        assert hasattr(attest, "selections")
        quoted = [pcr for selection in attest.selections if selection.hash_alg == TPM_ALG_SHA256
                  for pcr in selection.pcrs]
        wanted = self.policy.pcrs if self.policy else []
        if not set(wanted) <= set(quoted):
            return [Finding(component="pcrs", reason=f"the quote covers PCRs {quoted}, the "
                            f"policy needs {sorted(wanted)}")]
        if sorted(evidence.pcrs) != sorted(quoted):
            return [Finding(component="pcrs", reason="the PCR values sent are not the ones "
                            "quoted")]
        values = [evidence.pcrs[pcr] for pcr in sorted(quoted)]
        if pcr_digest(values) != attest.pcr_digest:  # type: ignore[attr-defined]
            return [Finding(component="pcrs", reason="the PCR values do not hash to the "
                            "quoted digest (tampered)")]
        return []

    def _replayed(self, log_bytes: bytes) -> tuple[event_log.EventLog, dict[int, bytes]]:
        """The log parsed and replayed. A boot's log does not change between a
        node's periodic attestations, so results are kept by the log's SHA-256
        (content-addressed: a different log is parsed afresh)."""
        digest = hashlib.sha256(log_bytes).digest()
        cached = self._logs.get(digest)
        if cached is None:
            log = event_log.parse(log_bytes)
            cached = (log, log.replay(TPM_ALG_SHA256))
            if len(self._logs) >= LOG_CACHE:
                self._logs.pop(next(iter(self._logs)))
            self._logs[digest] = cached
        return cached

    def _evaluated(self, policy: Policy, log_bytes: bytes, log: event_log.EventLog
                   ) -> tuple[dict[str, str], dict[str, str]]:
        # Deterministic in (policy, log): kept beside the log's replay.
        key = (policy.label, hashlib.sha256(log_bytes).digest())
        cached = self._evaluations.get(key)
        if cached is None:
            cached = evaluate(policy, log)
            if len(self._evaluations) >= LOG_CACHE:
                self._evaluations.pop(next(iter(self._evaluations)))
            self._evaluations[key] = cached
        return dict(cached[0]), dict(cached[1])

    def _replay(self, replayed: dict[int, bytes], evidence: Evidence) -> list[Finding]:
        for pcr, value in evidence.pcrs.items():
            if replayed.get(pcr, bytes(32)) != value:
                return [Finding(component="event_log", reason=f"replaying the event log does "
                                f"not give PCR {pcr}'s quoted value")]
        return []

    @staticmethod
    def _boot(node: EnrolledNode, reset_count: int, expect_new_boot: bool) -> list[Finding]:
        if node.last_reset_count is None or reset_count == node.last_reset_count \
                or expect_new_boot:
            return []
        return [Finding(component="boot", severity="critical",
                        reason=f"the node rebooted (reset count {node.last_reset_count} -> "
                               f"{reset_count}): it must be attested afresh")]
