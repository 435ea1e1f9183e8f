"""The agent's side of attestation: its TPM, through tpm2-pytss (ESAPI).

* The endorsement key from the TCG's default RSA template, and its
  certificate from NV (``create_ek_template`` reads both as the TCG EK
  profile says).
* The attestation key: a restricted RSASSA-SHA256 signing key created as a
  primary in the *endorsement* hierarchy — quotes by keys outside it have
  their reset and restart counts obfuscated, which would hide reboots. A
  primary key is derived from the hierarchy's seed and its template, so it is
  the same key after every reboot (its Name is stable; no storage needed).
* ``activate``: TPM2_ActivateCredential, authorised by the EK's policy
  (PolicySecret on the endorsement hierarchy).
* ``quote``: TPM2_Quote over SHA-256 PCRs with the verifier's nonce, plus
  the PCR values it covered.

``TPM2_ActivateCredential`` and ``Quote`` are blocking calls: the agent runs
them in a worker thread. Transient objects left by a process that died are
flushed at open (a TPM holds only a few, and swtpm runs out).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from types import TracebackType
from typing import Any

os.environ.setdefault("TSS2_LOG", "all+NONE")  # the C library logs optional NV misses

from tpm2_pytss import (
    ESAPI,
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_ID_OBJECT,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMT_SYM_DEF,
    TSS2_Exception,
)
from tpm2_pytss.constants import (
    ESYS_TR,
    TPM2_ALG,
    TPM2_CAP,
    TPM2_HR,
    TPM2_SE,
    TPMA_OBJECT,
)
from tpm2_pytss.utils import NVReadEK, create_ek_template

AK_TEMPLATE = "rsa2048:rsassa-sha256:null"
AK_ATTRIBUTES = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM
                 | TPMA_OBJECT.FIXEDPARENT | TPMA_OBJECT.SENSITIVEDATAORIGIN
                 | TPMA_OBJECT.USERWITHAUTH)
EVENT_LOG = "/sys/kernel/security/tpm0/binary_bios_measurements"


class TpmError(Exception):
    """The TPM did not give what attestation needs (retried at the next attempt)."""


@dataclass(frozen=True, slots=True)
class Quote:
    attest: bytes
    signature: bytes
    pcrs: dict[int, bytes]


class Tpm:
    def __init__(self, tcti: str | None = None) -> None:
        """``tcti``: ``device:/dev/tpmrm0`` on hosts, ``swtpm:host=...,port=...`` in tests."""
        self.esapi = ESAPI(tcti)
        self._flush_transients()
        self._ek: tuple[Any, bytes, bytes] | None = None
        self._ak: tuple[Any, bytes] | None = None

    def _flush_transients(self) -> None:
        _more, data = self.esapi.get_capability(TPM2_CAP.HANDLES, TPM2_HR.TRANSIENT, 64)
        for handle in data.data.handles:
            self.esapi.flush_context(self.esapi.tr_from_tpmpublic(handle))

    def endorsement(self) -> tuple[bytes, bytes]:
        """(the EK's ``TPM2B_PUBLIC``, its certificate in DER)."""
        if self._ek is None:
            certificate, template = create_ek_template("EK-RSA2048", NVReadEK(self.esapi))
            if not certificate:
                # Seen once in CI on a just-manufactured swtpm: the NV read came
                # back empty. Not cached, so the next enrolment reads it again.
                raise TpmError("the TPM returned no EK certificate (NV index 0x01c00002)")
            handle, public, *_ = self.esapi.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
            self._ek = (handle, bytes(public.marshal()), bytes(certificate))
        return self._ek[1], self._ek[2]

    def attestation_key(self) -> bytes:
        """The AK's ``TPM2B_PUBLIC``."""
        if self._ak is None:
            template = TPM2B_PUBLIC.parse(AK_TEMPLATE, objectAttributes=AK_ATTRIBUTES)
            handle, public, *_ = self.esapi.create_primary(
                TPM2B_SENSITIVE_CREATE(), template, ESYS_TR.ENDORSEMENT)
            self._ak = (handle, bytes(public.marshal()))
        return self._ak[1]

    def activate(self, credential_blob: bytes, secret: bytes) -> bytes:
        self.endorsement()
        self.attestation_key()
        assert self._ek is not None
        assert self._ak is not None
        session = self.esapi.start_auth_session(
            ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            TPM2_ALG.SHA256)
        try:
            self.esapi.policy_secret(ESYS_TR.ENDORSEMENT, session)
            blob, _ = TPM2B_ID_OBJECT.unmarshal(credential_blob)
            encrypted, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(secret)
            return bytes(self.esapi.activate_credential(
                self._ak[0], self._ek[0], blob, encrypted, session1=ESYS_TR.PASSWORD,
                session2=session))
        finally:
            self.esapi.flush_context(session)

    def quote(self, nonce: bytes, pcrs: list[int]) -> Quote:
        self.attestation_key()
        assert self._ak is not None
        selection = "sha256:" + ",".join(str(p) for p in sorted(pcrs))
        attest, signature = self.esapi.quote(self._ak[0], selection, nonce)
        values: dict[int, bytes] = {}
        for start in range(0, len(pcrs), 8):  # PCR_Read answers at most 8 at a time
            chunk = sorted(pcrs)[start: start + 8]
            _, _, digests = self.esapi.pcr_read("sha256:" + ",".join(map(str, chunk)))
            values.update(zip(chunk, (bytes(d) for d in digests), strict=True))
        return Quote(attest=bytes(attest.marshal())[2:],  # TPMS_ATTEST, without TPM2B size
                     signature=bytes(signature.marshal()), pcrs=values)

    def close(self) -> None:
        for held in (self._ek, self._ak):
            if held is not None:
                # Gone already if the TPM restarted (a reboot) since.
                with contextlib.suppress(TSS2_Exception):
                    self.esapi.flush_context(held[0])
        self._ek = self._ak = None
        with contextlib.suppress(TSS2_Exception):
            self.esapi.close()

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def read_event_log(path: str = EVENT_LOG) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()
