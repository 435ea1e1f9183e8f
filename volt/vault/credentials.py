"""BMC credentials at rest: AES-256-GCM under a key from configuration.

A BMC password is the keys to a machine, so the store never holds one in the
clear: each is sealed with AES-GCM (``cryptography``), bound by its associated
data to the rack and node it belongs to — a sealed password copied onto
another node's row does not open there. The key is a file outside the store
(``vault.credentials_key_file``, or ``vault-credentials.key`` in the secrets
folder): a copy of the store alone opens nothing.

Opened credentials live only in the scheduler's memory while it drives a BMC;
they are never returned by the API, logged or put on the bus.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from volt.config import ConfigError, VoltConfig
from volt.identity.keyring import Keyring

PREFIX = "aesgcm1:"
"""What a sealed value starts with (the scheme, so it can change later)."""


class CredentialError(Exception):
    """A sealed credential does not open: another key, another node, or tampered."""


class CredentialBox:
    def __init__(self, key: bytes) -> None:
        if len(key) != 32:
            raise ValueError("the Vault credentials key must be 32 bytes (AES-256)")
        self._aead = AESGCM(key)

    @classmethod
    def from_config(cls, config: VoltConfig) -> CredentialBox:
        path = config.vault.credentials_key_file
        if not path:
            return cls(Keyring(config.secrets_path()).vault_credentials_key())
        try:
            return cls(Path(path).expanduser().read_bytes())
        except OSError as exc:
            raise ConfigError(f"vault.credentials_key_file: cannot read {path}: "
                              f"{exc.strerror}") from None
        except ValueError as exc:
            raise ConfigError(f"vault.credentials_key_file: {exc}") from None

    def seal(self, secret: str, *, rack_id: str, node: str) -> str:
        """A node's BMC password."""
        return self.seal_as(secret, f"volt.vault.bmc/{rack_id}/{node}")

    def open(self, sealed: str, *, rack_id: str, node: str) -> str:
        try:
            return self.open_as(sealed, f"volt.vault.bmc/{rack_id}/{node}")
        except CredentialError as exc:
            raise CredentialError(f"node {node}: {exc}") from exc

    def seal_as(self, secret: str, context: str) -> str:
        """Any secret, bound to ``context`` (what it belongs to)."""
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), context.encode())
        return PREFIX + base64.b64encode(nonce + sealed).decode()

    def open_as(self, sealed: str, context: str) -> str:
        if not sealed.startswith(PREFIX):
            raise CredentialError("not a sealed secret")
        try:
            raw = base64.b64decode(sealed[len(PREFIX):], validate=True)
            return self._aead.decrypt(raw[:12], raw[12:], context.encode()).decode()
        except (InvalidTag, ValueError) as exc:
            raise CredentialError("it does not open under this key "
                                  "(vault.credentials_key_file)") from exc
