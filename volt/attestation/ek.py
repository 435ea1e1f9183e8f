"""Endorsement key certificates: the TPM is genuine, by its maker's CA.

A TPM's manufacturer provisions an EK certificate in NV (RSA EK certificate
at index ``0x01c00002``). Enrolment checks that it chains to one of the
configured manufacturer CAs (``attestation.ek_ca_file``: a PEM bundle of
roots and intermediates; swtpm's local CA in tests), that it is valid now,
and that its key is the EK the node presented. EK certificates follow the TCG
EK credential profile, not web PKI (no EKU for TLS, often a SAN-only subject),
so the signature is checked here with ``verify_directly_issued_by`` rather
than by a TLS path validator.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

from volt.attestation.tpm2_structures import TPM_ALG_RSA, parse_public

EK_CERT_NV_INDEX_RSA = 0x01C00002


class EkCertificateError(ValueError):
    pass


def load_cas(pem: bytes) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(pem)


def check_ek_certificate(der: bytes, ek_public: bytes, cas: Sequence[x509.Certificate], *,
                         now: datetime.datetime | None = None) -> x509.Certificate:
    """The EK certificate, once it is proven; ``EkCertificateError`` says why not."""
    if not cas:
        raise EkCertificateError("no manufacturer CA is configured: refusing every TPM")
    try:
        cert = x509.load_der_x509_certificate(der.rstrip(b"\xff"))
    except ValueError as exc:
        raise EkCertificateError(f"the EK certificate is not DER X.509: {exc}") from None
    now = now or datetime.datetime.now(datetime.UTC)
    # Every configured certificate is a trust anchor (manufacturers ship their
    # intermediates beside their roots): the EK certificate must be signed by one.
    issuer = next((ca for ca in cas if ca.subject == cert.issuer and _signed_by(cert, ca)),
                  None)
    if issuer is None:
        raise EkCertificateError("the EK certificate does not chain to a configured "
                                 "manufacturer CA")
    for checked in (cert, issuer):
        if not checked.not_valid_before_utc <= now <= checked.not_valid_after_utc:
            raise EkCertificateError(f"certificate {checked.subject.rfc4514_string()!r} is "
                                     "not valid now")
    key = cert.public_key()
    ek = parse_public(ek_public)
    if ek.key_type != TPM_ALG_RSA or not isinstance(key, rsa.RSAPublicKey) or \
            key.public_numbers().n != int.from_bytes(ek.rsa_modulus, "big"):
        raise EkCertificateError("the EK certificate is for another key than the node's EK")
    return cert


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
