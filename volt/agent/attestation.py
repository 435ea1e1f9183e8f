"""The agent proves what it booted: enrol its TPM, then push quotes.

At start (every boot starts the agent): present the EK, its certificate and
the AK; activate the credential the scheduler sealed to the EK; then at every
``attestation_interval_s`` ask for a nonce, quote the policy's PCRs with it
and push the quote with the event log. All over the agent's own NATS
connection (request/reply): nothing listens on the node. TPM calls block, so
they run in a worker thread. A refused enrolment or a failing verdict is
logged and retried with backoff; the scheduler has already taken the node
out of placement.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from nats.aio.client import Client

from volt.attestation.verifier import binding
from volt.identity.workload import spiffe_id_of
from volt.identity.workload_ca import Svid
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


def _svid(result: AttestResult, key: ec.EllipticCurvePrivateKey) -> Svid | None:
    if not result.passed or not result.svid:
        return None
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    return Svid(spiffe_id_of(result.svid), result.svid, key_pem, result.bundle)


PCRS = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""Quoted every time; the scheduler's policy says which of them it checks."""
REQUEST_TIMEOUT_S = 10.0


@dataclass
class AttestationClient:
    node_id: str
    tcti: str
    event_log_path: str
    interval_s: float = 300.0
    renew: Callable[[Svid], None] | None = None
    """Given: each attestation also asks for a new bus SVID, handed to this."""
    attested: bool = False
    """The last verdict passed (the volt block of this node's responses says so)."""

    async def run(self, nc: Client) -> None:
        from volt.attestation.tpm import Tpm

        backoff = 1.0
        tpm = await asyncio.to_thread(Tpm, self.tcti)
        try:
            while True:
                try:
                    await self._enrol(nc, tpm)
                    while True:
                        if not await self._attest(nc, tpm):
                            break  # enrol again (the scheduler restarted, or a reboot)
                        backoff = 1.0
                        await asyncio.sleep(self.interval_s)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # TPM, NATS or the scheduler away: retry
                    log.warning("attestation failed: %s", exc)
                self.attested = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
        finally:
            await asyncio.to_thread(tpm.close)

    async def certify(self, nc: Client) -> Svid:
        """Earn this node's bus SVID: enrol, then push one quote whose qualifying
        data binds the verifier's nonce to a new key (``verifier.binding``); the
        scheduler certifies that key only if the verdict passes. The private key
        never leaves this process."""
        from volt.attestation.tpm import Tpm

        tpm = await asyncio.to_thread(Tpm, self.tcti)
        try:
            await self._enrol(nc, tpm)
            key = ec.generate_private_key(ec.SECP256R1())
            result = await self._evidence(nc, tpm, key)
        finally:
            await asyncio.to_thread(tpm.close)
        svid = _svid(result, key)
        if svid is None:
            raise RuntimeError(f"no SVID: {', '.join(result.reasons) or '?'}")
        return svid

    async def _evidence(self, nc: Client, tpm: Any,
                        key: ec.EllipticCurvePrivateKey | None) -> AttestResult:
        """One quote with a fresh nonce, and the log, pushed; with ``key``, the
        quote also vouches for that key (the scheduler answers with its SVID)."""
        from volt.attestation.tpm import read_event_log

        nonce = await self._request(nc, subjects.attest(self.node_id, "nonce"),
                                    NonceRequest(node_id=self.node_id))
        assert isinstance(nonce, NonceAnswer)
        spki = b"" if key is None else key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        qualifying = binding(nonce.nonce, spki) if spki else nonce.nonce
        quote = await asyncio.to_thread(tpm.quote, qualifying, PCRS)
        event_log = await asyncio.to_thread(read_event_log, self.event_log_path)
        result = await self._request(nc, subjects.attest(self.node_id, "evidence"), AttestEvidence(
            node_id=self.node_id, attest=quote.attest, signature=quote.signature,
            pcrs=quote.pcrs, event_log=event_log, svid_key=spki,
            nonce=nonce.nonce if spki else b""))
        assert isinstance(result, AttestResult)
        return result

    async def _request(self, nc: Client, subject: str, message: Any) -> Any:
        reply = await nc.request(subject, encode(message), timeout=REQUEST_TIMEOUT_S)
        return ATTEST.decode(reply.data)

    async def _enrol(self, nc: Client, tpm: Any) -> None:
        ek_public, certificate = await asyncio.to_thread(tpm.endorsement)
        ak_public = await asyncio.to_thread(tpm.attestation_key)
        challenge = await self._request(nc, subjects.attest(self.node_id, "enroll"), AttestEnroll(
            node_id=self.node_id, ek_public=ek_public, ek_certificate=certificate,
            ak_public=ak_public))
        if not isinstance(challenge, EnrollChallenge) or challenge.refused:
            raise RuntimeError(f"enrolment refused: {getattr(challenge, 'refused', '?')}")
        credential = await asyncio.to_thread(tpm.activate, challenge.credential_blob,
                                             challenge.secret)
        result = await self._request(nc, subjects.attest(self.node_id, "proof"), EnrollProof(
            node_id=self.node_id, credential=credential))
        if not isinstance(result, AttestResult) or not result.passed:
            raise RuntimeError(f"enrolment refused: {getattr(result, 'reasons', '?')}")
        log.info("enrolled with the scheduler")

    async def _attest(self, nc: Client, tpm: Any) -> bool:
        """One quote pushed; False when the scheduler no longer knows this node.
        A node whose bus SVID was earned by attestation renews it every time."""
        key = ec.generate_private_key(ec.SECP256R1()) if self.renew is not None else None
        result = await self._evidence(nc, tpm, key)
        self.attested = result.passed
        if key is not None and self.renew is not None and (svid := _svid(result, key)):
            self.renew(svid)
        if result.reasons == ["not enrolled"]:
            return False
        if not result.passed:
            log.error("attestation verdict failed", extra={"reasons": result.reasons})
            if any(reason.startswith("boot:") for reason in result.reasons):
                return False  # a reboot: enrol again, from this boot
        return True
