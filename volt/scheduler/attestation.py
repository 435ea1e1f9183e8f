"""The scheduler's side of node trust: enrol attestation keys, hand out nonces,
verify pushed evidence, and gate placement on the verdicts.

Push, not pull: agents dial the scheduler over NATS (request/reply on
``volt.node.<node_id>.attest.*``); nothing listens on a node. A node enrols once per
agent start (a reboot restarts the agent, so every boot is attested afresh),
then pushes a quote at every interval. A failing verdict quarantines the node
in the node table at once, and the placement view is republished at once, so
API replicas stop routing to it within one view publish.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nats.aio.client import Client
from nats.aio.msg import Msg

from volt.attestation.ek import load_cas
from volt.attestation.enrolment import Enrolment, EnrolmentRefused
from volt.attestation.policy import Policy, PolicyError, load_policy
from volt.attestation.verifier import EnrolledNode, Evidence, SignedVerdict, Verifier
from volt.config import AttestationSettings
from volt.identity.bus_authority import BusAuthority
from volt.scheduler.node_table import NodeTable
from volt.scheduler.senders import sent_by
from volt.wire import (
    ATTEST,
    AttestEnroll,
    AttestEvidence,
    AttestResult,
    EnrollChallenge,
    EnrollProof,
    NonceAnswer,
    NonceRequest,
    encode,
    subjects,
)

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()


def load_settings_policy(settings: AttestationSettings) -> Policy | None:
    """The configured policy, or None (refuse every node) with the reason logged."""
    if not settings.policy_file:
        return None
    try:
        return load_policy(Path(settings.policy_file).read_bytes())
    except (OSError, PolicyError) as exc:
        log.error("attestation policy unusable, refusing every node: %s", exc)
        return None


@dataclass
class AttestationService:
    table: NodeTable
    verifier: Verifier
    enrolment: Enrolment
    verdict_ttl_s: float
    on_change: Callable[[], None]
    """Republish the placement view (a verdict changed what is placeable)."""
    enrolled: dict[str, EnrolledNode] = field(default_factory=dict)
    verdicts: dict[str, SignedVerdict] = field(default_factory=dict)
    """The latest verdict per node (what Vault hands tenants)."""
    authority: BusAuthority | None = None
    """Holds the workload CA: a node that passes with a bound key gets its bus
    SVID (if the operator admitted it). None: nodes get SVIDs elsewhere."""
    node_svid_lifetime: dt.timedelta = dt.timedelta(hours=1)

    @classmethod
    def from_settings(cls, settings: AttestationSettings, table: NodeTable,
                      signing_key: object, on_change: Callable[[], None],
                      authority: BusAuthority | None = None) -> AttestationService:
        cas = load_cas(Path(settings.ek_ca_file).read_bytes()) if settings.ek_ca_file else []
        verifier = Verifier(policy=load_settings_policy(settings), signing_key=signing_key,  # type: ignore[arg-type]
                            nonce_ttl_s=settings.nonce_ttl_s)
        return cls(table, verifier, Enrolment(cas), settings.verdict_ttl_s, on_change,
                   authority=authority,
                   node_svid_lifetime=dt.timedelta(seconds=settings.node_svid_lifetime_s))

    async def run(self, nc: Client) -> None:
        for step, handler in (("enroll", self._on_enroll), ("proof", self._on_proof),
                              ("nonce", self._on_nonce), ("evidence", self._on_evidence)):
            await nc.subscribe(subjects.attest_all(step), cb=handler)

    async def _on_enroll(self, msg: Msg) -> None:
        message = ATTEST.decode_or_drop(msg.data)
        if not msg.reply or not isinstance(message, AttestEnroll) \
                or not sent_by(msg, message.node_id):
            return
        try:
            challenge = self.enrolment.begin(message.node_id, ek_public=message.ek_public,
                                             ek_certificate=message.ek_certificate,
                                             ak_public=message.ak_public)
            answer = EnrollChallenge(credential_blob=challenge.credential_blob,
                                     secret=challenge.secret)
        except EnrolmentRefused as exc:
            log.warning("enrolment refused", extra={"node_id": message.node_id,
                                                    "reason": str(exc)})
            self._fail(message.node_id, [f"enrolment refused: {exc}"])
            answer = EnrollChallenge(credential_blob=b"", secret=b"", refused=str(exc))
        await msg.respond(encode(answer))

    async def _on_proof(self, msg: Msg) -> None:
        message = ATTEST.decode_or_drop(msg.data)
        if not msg.reply or not isinstance(message, EnrollProof) \
                or not sent_by(msg, message.node_id):
            return
        try:
            ak_public = self.enrolment.complete(message.node_id, message.credential)
        except EnrolmentRefused as exc:
            self._fail(message.node_id, [f"enrolment refused: {exc}"])
            await msg.respond(encode(AttestResult(passed=False, reasons=[str(exc)])))
            return
        # A new enrolment is a new boot: the old baseline and verdict go.
        self.enrolled[message.node_id] = EnrolledNode(message.node_id, ak_public)
        self.table.forget_verdict(message.node_id)
        log.info("node enrolled", extra={"node_id": message.node_id})
        await msg.respond(encode(AttestResult(passed=True)))

    async def _on_nonce(self, msg: Msg) -> None:
        message = ATTEST.decode_or_drop(msg.data)
        if msg.reply and isinstance(message, NonceRequest) and sent_by(msg, message.node_id):
            node = self.enrolled.get(message.node_id)
            await msg.respond(encode(NonceAnswer(
                nonce=self.verifier.challenge(message.node_id),
                expect_new_boot=node is not None and node.last_reset_count is None)))

    async def _on_evidence(self, msg: Msg) -> None:
        message = ATTEST.decode_or_drop(msg.data)
        if not msg.reply or not isinstance(message, AttestEvidence) \
                or not sent_by(msg, message.node_id):
            return
        node = self.enrolled.get(message.node_id)
        if node is None:
            await msg.respond(encode(AttestResult(passed=False, reasons=["not enrolled"])))
            return
        signed = self.verifier.verify(node, Evidence(
            attest=message.attest, signature=message.signature, pcrs=message.pcrs,
            event_log=message.event_log, bound_key=message.svid_key, nonce=message.nonce),
            expect_new_boot=node.last_reset_count is None)
        verdict = signed.verdict
        self.verdicts[message.node_id] = signed
        reasons = [f"{f.component}: {f.reason}" for f in verdict.findings
                   if f.severity == "critical"]
        if self.table.set_verdict(message.node_id, passed=verdict.passed, reasons=reasons,
                                  ttl_s=self.verdict_ttl_s):
            self.on_change()
        if not verdict.passed:
            log.error("attestation failed: node quarantined",
                      extra={"node_id": message.node_id, "reasons": reasons})
        svid, bundle = b"", b""
        if verdict.passed and message.svid_key:
            svid, bundle, refused = self._certify(message.node_id, message.svid_key)
            if refused:
                reasons = [refused]
        await msg.respond(encode(AttestResult(passed=verdict.passed, reasons=reasons,
                                              verdict=_json.encode(signed), svid=svid,
                                              bundle=bundle)))

    def _certify(self, node_id: str, svid_key: bytes) -> tuple[bytes, bytes, str]:
        """The node's bus SVID for the key its passing quote vouched for."""
        if self.authority is None:
            return b"", b"", "svid: this scheduler does not issue bus SVIDs"
        spiffe_id = self.authority.admitted_node(node_id)
        if spiffe_id is None:
            log.warning("attested node is not admitted to the bus", extra={"node_id": node_id})
            return b"", b"", "svid: the node is not admitted (volt admin bus issue enrol)"
        try:
            public_key = serialization.load_der_public_key(svid_key)
        except ValueError:
            return b"", b"", "svid: the key is not a DER SubjectPublicKeyInfo"
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            return b"", b"", "svid: the key must be an EC (P-256) key"
        svid = self.authority.ca.certify(spiffe_id, public_key, lifetime=self.node_svid_lifetime)
        log.info("bus SVID issued to an attested node",
                 extra={"node_id": node_id, "spiffe_id": spiffe_id})
        return svid, self.authority.ca.bundle_pem, ""

    def _fail(self, node_id: str, reasons: list[str]) -> None:
        if self.table.set_verdict(node_id, passed=False, reasons=reasons,
                                  ttl_s=self.verdict_ttl_s):
            self.on_change()
