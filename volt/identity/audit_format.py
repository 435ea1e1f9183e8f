"""How audit events and checkpoints are encoded, hashed and signed: what a
verifier needs, with no store behind it (the SDK's ``volt audit verify``
uses this module and ``merkle``)."""

from __future__ import annotations

import base64
from dataclasses import dataclass

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from volt.keyid import public_key_id
from volt.wire import AuditEvent

__all__ = ["Checkpoint", "checkpoint_text", "decode_leaf", "leaf_bytes", "public_key_id",
           "signature_valid"]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(AuditEvent)
PURPOSE = "audit-checkpoint"


def leaf_bytes(event: AuditEvent) -> bytes:
    return _encoder.encode(event)


def decode_leaf(body: bytes) -> AuditEvent:
    return _decoder.decode(body)


@dataclass(frozen=True, slots=True)
class Checkpoint:
    tree_size: int
    root_hash: bytes
    time_ms: int
    key_id: str
    signature: bytes

    def signed_text(self) -> bytes:
        return checkpoint_text(self.tree_size, self.root_hash, self.time_ms)


def checkpoint_text(tree_size: int, root_hash: bytes, time_ms: int) -> bytes:
    return (f"volt-audit-log/v1\n{tree_size}\n{base64.b64encode(root_hash).decode()}\n"
            f"{time_ms}\n").encode()


def signature_valid(checkpoint: Checkpoint, public_key: Ed25519PublicKey) -> bool:
    if public_key_id(public_key) != checkpoint.key_id:
        return False
    try:
        public_key.verify(checkpoint.signature, checkpoint.signed_text())
    except InvalidSignature:
        return False
    return True


