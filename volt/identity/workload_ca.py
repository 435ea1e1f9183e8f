"""Volt's own CA: X.509-SVIDs for Volt's processes (nodes, API replicas, the scheduler).

Every process on the bus proves who it is with an X.509-SVID (SPIFFE's
certificate profile: one ``spiffe://`` URI SAN, not a CA, a short life), and
nats-server maps that URI to a bus user with only that role's permissions
(``verify_and_map``; see ``volt/wire/permissions.py``). The IDs are in
``volt/identity/workload.py``.

The CA key is ECDSA P-256 (what Go's TLS in nats-server and OpenSSL both
verify everywhere) and lives in the keyring folder beside the other identity
secrets; it is made on first use, atomically, like them. SPIRE can replace
this CA for larger fleets; the IDs and the bus permissions stay the same.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from volt.identity.keyring import _create_once

CA_LIFETIME = dt.timedelta(days=3650)
SVID_LIFETIME = dt.timedelta(days=1)


@dataclass(frozen=True)
class Svid:
    spiffe_id: str
    certificate_pem: bytes
    key_pem: bytes
    bundle_pem: bytes
    """The CA certificates that verify it (and every other SVID)."""

    def write(self, folder: Path) -> SvidFiles:
        """``svid.pem``, ``svid-key.pem`` (0600) and ``bundle.pem`` in ``folder``."""
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = SvidFiles(folder / "svid.pem", folder / "svid-key.pem", folder / "bundle.pem")
        files.key.touch(mode=0o600)
        files.key.write_bytes(self.key_pem)
        files.certificate.write_bytes(self.certificate_pem)
        files.bundle.write_bytes(self.bundle_pem)
        return files


@dataclass(frozen=True)
class SvidFiles:
    certificate: Path
    key: Path
    bundle: Path


def _private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class WorkloadCA:
    def __init__(self, key: ec.EllipticCurvePrivateKey, certificate: x509.Certificate) -> None:
        self._key = key
        self.certificate = certificate

    @classmethod
    def in_folder(cls, folder: Path, trust_domain: str) -> WorkloadCA:
        """The CA kept in ``folder`` (the keyring), made on first use."""
        key = serialization.load_pem_private_key(
            _create_once(folder / "workload-ca-key.pem",
                         lambda: _private_pem(ec.generate_private_key(ec.SECP256R1()))), None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{folder / 'workload-ca-key.pem'} is not an EC private key")

        def self_signed() -> bytes:
            return cls._self_signed(key, trust_domain).public_bytes(serialization.Encoding.PEM)

        certificate = x509.load_pem_x509_certificate(
            _create_once(folder / "workload-ca.pem", self_signed))
        return cls(key, certificate)

    @staticmethod
    def _self_signed(key: ec.EllipticCurvePrivateKey, trust_domain: str) -> x509.Certificate:
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Volt"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"Volt workload CA {trust_domain}"),
        ])
        return (x509.CertificateBuilder()
                .subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - dt.timedelta(minutes=5))
                .not_valid_after(now + CA_LIFETIME)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(x509.KeyUsage(
                    digital_signature=True, content_commitment=False, key_encipherment=False,
                    data_encipherment=False, key_agreement=False, key_cert_sign=True,
                    crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.SubjectAlternativeName(
                    [x509.UniformResourceIdentifier(f"spiffe://{trust_domain}")]), critical=False)
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                               critical=False)
                .sign(key, hashes.SHA256()))

    @property
    def bundle_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def issue(self, spiffe_id: str, *, hosts: tuple[str, ...] = (),
              lifetime: dt.timedelta = SVID_LIFETIME) -> Svid:
        """An X.509-SVID with a new key for ``spiffe_id``; ``hosts`` (DNS names or
        IP addresses) make it a server certificate too (the bus's own)."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = self.certify(spiffe_id, key.public_key(), hosts=hosts, lifetime=lifetime)
        return Svid(spiffe_id, certificate, _private_pem(key), self.bundle_pem)

    def certify(self, spiffe_id: str, public_key: ec.EllipticCurvePublicKey, *,
                hosts: tuple[str, ...] = (), lifetime: dt.timedelta = SVID_LIFETIME) -> bytes:
        """The X.509-SVID (PEM) for a key someone else holds (an attested node's)."""
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(spiffe_id)]
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        now = dt.datetime.now(dt.UTC)
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Volt")]))
            .issuer_name(self.certificate.subject).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(min(now + lifetime, self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            # Not critical: the subject is not empty (RFC 5280 4.2.1.6; verifiers
            # built on it, cryptography's among them, refuse a critical one here).
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256()))
        return certificate.public_bytes(serialization.Encoding.PEM)
