"""Enrolment: a node's attestation key becomes trusted, once, by proof.

1. The node presents its EK (with the manufacturer's certificate) and its AK.
2. The EK certificate must chain to a configured manufacturer CA and certify
   that EK; the AK must be a restricted signing key bound to its TPM.
3. The verifier makes a credential for the AK's Name, sealed to the EK
   (``make_credential``); only that TPM, holding both keys, can activate it.
4. The node returns the activated credential; a match (constant time)
   enrols the AK. A challenge is good once and for ``challenge_ttl_s``.
"""

from __future__ import annotations

import hmac
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cryptography import x509

from volt.attestation.credential import Challenge, make_credential
from volt.attestation.ek import EkCertificateError, check_ek_certificate
from volt.attestation.tpm2_structures import StructureError, parse_public
from volt.attestation.verifier import check_ak


class EnrolmentRefused(Exception):
    pass


@dataclass
class _Pending:
    ak_public: bytes
    credential: bytes
    issued: float


@dataclass
class Enrolment:
    cas: Sequence[x509.Certificate]
    challenge_ttl_s: float = 60.0
    clock: Callable[[], float] = time.time
    _pending: dict[str, _Pending] = field(default_factory=dict)

    def begin(self, node_id: str, *, ek_public: bytes, ek_certificate: bytes,
              ak_public: bytes) -> Challenge:
        try:
            check_ek_certificate(ek_certificate, ek_public, self.cas)
            ak = parse_public(ak_public)
        except (EkCertificateError, StructureError) as exc:
            raise EnrolmentRefused(str(exc)) from None
        problem = check_ak(ak)
        if problem:
            raise EnrolmentRefused(f"the attestation key is refused: {problem}")
        credential = os.urandom(32)
        self._pending[node_id] = _Pending(ak_public, credential, self.clock())
        return make_credential(ek_public, ak.name, credential)

    def complete(self, node_id: str, credential: bytes) -> bytes:
        """The enrolled AK's public area, once the node proved its TPM."""
        pending = self._pending.pop(node_id, None)  # one try per challenge
        if pending is None:
            raise EnrolmentRefused("no enrolment is in progress for this node")
        if self.clock() - pending.issued > self.challenge_ttl_s:
            raise EnrolmentRefused("the credential challenge expired")
        if not hmac.compare_digest(pending.credential, credential):
            raise EnrolmentRefused("the credential does not match: the AK is not in the "
                                   "TPM of that EK")
        return pending.ak_public
