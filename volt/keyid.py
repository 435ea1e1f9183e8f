"""How Volt names its Ed25519 signing keys: the first 16 hex digits of the
SHA-256 of the raw public key. Audit checkpoints and attestation verdicts both
carry it, so a verifier knows which published key to check them with."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def public_key_id(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]
