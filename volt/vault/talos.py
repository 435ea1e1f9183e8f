"""Talos Linux machine configuration for a tenant's rack.

Per reservation, one secrets bundle, made once (when the tenant first asks)
and stored sealed: the same document ``talosctl gen secrets`` writes — the
cluster id and secret, the bootstrap and trustd tokens, the secretbox key,
and the CAs (etcd, Kubernetes, the aggregator, the service-account key, and
Talos's own OS CA) with the same key types, subjects, usages and ten-year
lifetime. From it, each node's ``v1alpha1`` configuration: the first node (or
the first three, in a rack of three or more) control plane, the rest workers;
the node's hostname, its install disk, the cluster endpoint, the kubelet and
control-plane images of the pinned Talos version, and its STATE and
EPHEMERAL volumes encrypted with LUKS2 keys sealed to the node's TPM. Plus a
``talosconfig`` whose client certificate (``os:admin``) the OS CA signed.

``tests/vault/test_talos.py`` runs ``talosctl validate --mode metal
--strict`` of the pinned version on every config and feeds the bundle to
``talosctl gen config --with-secrets``.

Nothing here is logged: the bundle is the tenant's whole cluster PKI.
"""

from __future__ import annotations

import base64
import datetime as dt
import io
import secrets
import string
import tarfile
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KUBERNETES = {"v1.12.1": "v1.35.0"}
"""The Kubernetes version each Talos release Volt offers runs by default."""
CA_VALIDITY = dt.timedelta(hours=87600)
CLIENT_VALIDITY = dt.timedelta(days=365)
_TOKEN_ALPHABET = string.ascii_lowercase + string.digits

Key = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey


class TalosError(Exception):
    """A configuration cannot be made (an unknown Talos version, no such node)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _token() -> str:
    """Kubernetes' bootstrap-token shape, as Talos makes them: ``[a-z0-9]{6}.[a-z0-9]{16}``."""
    pick = secrets.choice
    return ("".join(pick(_TOKEN_ALPHABET) for _ in range(6)) + "."
            + "".join(pick(_TOKEN_ALPHABET) for _ in range(16)))


def _key_pem(key: Key) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        # Talos labels its PKCS#8 Ed25519 keys "ED25519 PRIVATE KEY".
        der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        body = base64.encodebytes(der).decode().replace("\n", "")
        lines = [body[i:i + 64] for i in range(0, len(body), 64)]
        return ("-----BEGIN ED25519 PRIVATE KEY-----\n" + "\n".join(lines)
                + "\n-----END ED25519 PRIVATE KEY-----\n").encode()
    return key.private_bytes(serialization.Encoding.PEM,
                             serialization.PrivateFormat.TraditionalOpenSSL,
                             serialization.NoEncryption())


def _load_key(pem: bytes) -> Key:
    if pem.startswith(b"-----BEGIN ED25519 PRIVATE KEY-----"):
        pem = pem.replace(b"ED25519 PRIVATE KEY", b"PRIVATE KEY")
    key = serialization.load_pem_private_key(pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
                      | rsa.RSAPrivateKey)
    return key


def _name(organization: str | None) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization)]
                     if organization else [])


def _sign(builder: x509.CertificateBuilder, key: Key) -> x509.Certificate:
    algorithm = None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256()
    return builder.sign(key, algorithm)


def _ca(key: Key, organization: str | None, now: dt.datetime) -> dict[str, str]:
    public = key.public_key()
    builder = (x509.CertificateBuilder()
               .subject_name(_name(organization)).issuer_name(_name(organization))
               .public_key(public).serial_number(x509.random_serial_number())
               .not_valid_before(now).not_valid_after(now + CA_VALIDITY)
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=True, key_cert_sign=True, content_commitment=False,
                   key_encipherment=False, data_encipherment=False, key_agreement=False,
                   crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                     ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                              critical=False))
    certificate = _sign(builder, key)
    return {"crt": _b64(certificate.public_bytes(serialization.Encoding.PEM)),
            "key": _b64(_key_pem(key))}


def generate_secrets(now: dt.datetime | None = None) -> dict[str, Any]:
    """A secrets bundle in ``talosctl gen secrets``'s shape."""
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    service_account = rsa.generate_private_key(public_exponent=65537, key_size=4096)
    return {
        "cluster": {"id": base64.urlsafe_b64encode(secrets.token_bytes(32)).decode(),
                    "secret": _b64(secrets.token_bytes(32))},
        "secrets": {"bootstraptoken": _token(),
                    "secretboxencryptionsecret": _b64(secrets.token_bytes(32))},
        "trustdinfo": {"token": _token()},
        "certs": {
            "etcd": _ca(ec.generate_private_key(ec.SECP256R1()), "etcd", now),
            "k8s": _ca(ec.generate_private_key(ec.SECP256R1()), "kubernetes", now),
            "k8saggregator": _ca(ec.generate_private_key(ec.SECP256R1()), None, now),
            "k8sserviceaccount": {"key": _b64(_key_pem(service_account))},
            "os": _ca(ed25519.Ed25519PrivateKey.generate(), "talos", now),
        },
    }


def control_planes(nodes: list[str]) -> list[str]:
    """One control-plane node, or three where the rack has as many (etcd's quorum)."""
    return nodes[:3] if len(nodes) >= 3 else nodes[:1]


def machine_config(bundle: dict[str, Any], *, node: str, control_plane: bool,
                   cluster_name: str, endpoint: str, install_disk: str,
                   talos_version: str) -> list[dict[str, Any]]:
    """The node's documents: its ``v1alpha1`` config, then its hostname and
    its two encrypted volumes."""
    if talos_version not in KUBERNETES:
        raise TalosError(f"Talos {talos_version} is not one Volt generates configs for")
    kubernetes = KUBERNETES[talos_version]
    certs = bundle["certs"]
    os_ca = dict(certs["os"]) if control_plane else {"crt": certs["os"]["crt"], "key": ""}
    k8s_ca = dict(certs["k8s"]) if control_plane else {"crt": certs["k8s"]["crt"], "key": ""}
    machine: dict[str, Any] = {
        "type": "controlplane" if control_plane else "worker",
        "token": bundle["trustdinfo"]["token"],
        "ca": os_ca,
        "certSANs": [],
        "kubelet": {"image": f"ghcr.io/siderolabs/kubelet:{kubernetes}",
                    "defaultRuntimeSeccompProfileEnabled": True,
                    "disableManifestsDirectory": True},
        "network": {},
        "install": {"disk": install_disk,
                    "image": f"ghcr.io/siderolabs/installer:{talos_version}", "wipe": False,
                    "grubUseUKICmdline": True},
        "features": {"diskQuotaSupport": True, "kubePrism": {"enabled": True, "port": 7445},
                     "hostDNS": {"enabled": True, "forwardKubeDNSToHost": True}},
    }
    cluster: dict[str, Any] = {
        "id": bundle["cluster"]["id"], "secret": bundle["cluster"]["secret"],
        "controlPlane": {"endpoint": endpoint}, "clusterName": cluster_name,
        "network": {"dnsDomain": "cluster.local", "podSubnets": ["10.244.0.0/16"],
                    "serviceSubnets": ["10.96.0.0/12"]},
        "token": bundle["secrets"]["bootstraptoken"],
        "ca": k8s_ca,
        "discovery": {"enabled": True, "registries": {"kubernetes": {"disabled": True},
                                                      "service": {}}},
    }
    if control_plane:
        machine["nodeLabels"] = {"node.kubernetes.io/exclude-from-external-load-balancers": ""}
        cluster |= {
            "secretboxEncryptionSecret": bundle["secrets"]["secretboxencryptionsecret"],
            "aggregatorCA": dict(certs["k8saggregator"]),
            "serviceAccount": {"key": certs["k8sserviceaccount"]["key"]},
            "apiServer": {"image": f"registry.k8s.io/kube-apiserver:{kubernetes}"},
            "controllerManager": {"image": f"registry.k8s.io/kube-controller-manager:"
                                           f"{kubernetes}"},
            "proxy": {"image": f"registry.k8s.io/kube-proxy:{kubernetes}"},
            "scheduler": {"image": f"registry.k8s.io/kube-scheduler:{kubernetes}"},
            "etcd": {"ca": dict(certs["etcd"])},
        }
    else:
        machine["registries"] = {}
    sealed_to_tpm = {"provider": "luks2", "keys": [{"slot": 0, "tpm": {}}]}
    return [
        {"version": "v1alpha1", "debug": False, "persist": True, "machine": machine,
         "cluster": cluster},
        {"apiVersion": "v1alpha1", "kind": "HostnameConfig", "hostname": node, "auto": "off"},
        *({"apiVersion": "v1alpha1", "kind": "VolumeConfig", "name": volume,
           "encryption": sealed_to_tpm} for volume in ("STATE", "EPHEMERAL")),
    ]


def talosconfig(bundle: dict[str, Any], *, context: str, endpoints: list[str],
                now: dt.datetime | None = None) -> dict[str, Any]:
    """A talosctl client configuration: an ``os:admin`` certificate from the OS CA."""
    now = (now or dt.datetime.now(dt.UTC)).replace(microsecond=0)
    ca_pem = base64.b64decode(bundle["certs"]["os"]["crt"])
    ca = x509.load_pem_x509_certificate(ca_pem)
    ca_key = _load_key(base64.b64decode(bundle["certs"]["os"]["key"]))
    client = ed25519.Ed25519PrivateKey.generate()
    certificate = _sign(
        x509.CertificateBuilder().subject_name(_name("os:admin")).issuer_name(ca.subject)
        .public_key(client.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + CLIENT_VALIDITY)
        .add_extension(x509.KeyUsage(
            digital_signature=True, key_cert_sign=False, content_commitment=False,
            key_encipherment=False, data_encipherment=False, key_agreement=False,
            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False), ca_key)
    return {"context": context, "contexts": {context: {
        "endpoints": endpoints, "nodes": endpoints, "ca": _b64(ca_pem),
        "crt": _b64(certificate.public_bytes(serialization.Encoding.PEM)),
        "key": _b64(_key_pem(client))}}}


def to_yaml(documents: list[dict[str, Any]]) -> str:
    text: str = yaml.safe_dump_all(documents, sort_keys=False)
    return text


def tar_of(files: dict[str, str]) -> bytes:
    """A tar archive of ``files`` (name -> text), each 0600: they hold keys."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()
