"""The secrets that identity needs, kept as files outside the store.

* ``api-key-hmac``: the key of the keyed hash under which API keys are stored.
  It is not in the store on purpose: a copy of the store alone cannot be used
  to test guesses against the stored hashes.
* ``token-signing.pem``: the Ed25519 key that signs OAuth access tokens
  (EdDSA JWTs); every API replica verifies with its public half.
* ``audit-signing.pem``: the Ed25519 key that signs audit checkpoints (used by
  the scheduler, the log's single writer).
* ``vault-credentials.key``: the AES-256 key that Vault's BMC credentials are
  encrypted under in the store (the scheduler and ``volt admin racks``).
* ``vault-proxy-hmac``: the key of the keyed hash under which tenants' Redfish
  proxy passwords are stored, and that MACs proxy sessions (the scheduler
  mints, the Redfish proxy checks).
* ``finetune-data.key``: the AES-256 key that training files and the adapters
  trained on them are encrypted under in their metro's object store (the API
  at upload and download, the agents that train and serve them).

On one machine (``volt up``, tests) they are made on first use in the secrets
folder (``identity.secrets_dir``, default ``<data>/secrets``, mode 0700, files
0600). Across machines, the operator provisions the same folder to every API
replica and the scheduler. Creation is atomic (write, then hard-link into
place), so processes starting together agree on one key.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def _create_once(path: Path, make: Callable[[], bytes]) -> bytes:
    """``path``'s bytes; if it does not exist yet, what ``make`` returns becomes them
    (atomically)."""
    with contextlib.suppress(FileNotFoundError):
        return path.read_bytes()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(make())
    try:
        os.link(temporary, path)  # fails if another process got there first
    except FileExistsError:
        pass
    finally:
        temporary.unlink()
    return path.read_bytes()


def _ed25519_pem() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def load_ed25519(path: Path) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(_create_once(path, _ed25519_pem), None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} does not hold an Ed25519 private key")
    return key


@dataclass(frozen=True)
class Keyring:
    folder: Path

    def api_key_hmac(self) -> bytes:
        return _create_once(self.folder / "api-key-hmac", lambda: secrets.token_bytes(32))

    def token_signing_key(self) -> Ed25519PrivateKey:
        return load_ed25519(self.folder / "token-signing.pem")

    def audit_signing_key(self) -> Ed25519PrivateKey:
        return load_ed25519(self.folder / "audit-signing.pem")

    def verifier_signing_key(self) -> Ed25519PrivateKey:
        """Signs attestation verdicts (the scheduler's verifier)."""
        return load_ed25519(self.folder / "verifier-signing.pem")

    def vault_credentials_key(self) -> bytes:
        """Encrypts BMC credentials at rest (``volt/vault/credentials.py``)."""
        return _create_once(self.folder / "vault-credentials.key",
                            lambda: secrets.token_bytes(32))

    def vault_proxy_key(self) -> bytes:
        """Hashes Redfish proxy passwords, MACs proxy sessions."""
        return _create_once(self.folder / "vault-proxy-hmac", lambda: secrets.token_bytes(32))

    def finetune_data_key(self) -> bytes:
        """Encrypts training files and adapters at rest (``volt/finetune/blobs.py``)."""
        return _create_once(self.folder / "finetune-data.key", lambda: secrets.token_bytes(32))
