"""Encoding and decoding of wire messages, with typed errors.

Hierarchy::

    WireError                 bytes that cannot become a message this build knows
    ├── MalformedMessage      not msgpack, or not the shape of any message
    └── UnsupportedVersion    a well-formed message whose schema version we do not read

A receiver catches ``WireError``, counts it (``volt_wire_dropped_total``) and
drops the message: bad bytes from one peer never crash a service.
"""

from __future__ import annotations

import logging
from typing import Any, Generic, TypeVar

import msgspec
from prometheus_client import Counter

from volt.wire.messages import (
    WIRE_VERSION,
    AttestMessage,
    BatchedReplyMessage,
    FinetuneMessage,
    ForgeMessage,
    IdentityMessage,
    InferenceMessage,
    NodeMessage,
    ReplyMessage,
    SchedulerMessage,
    UsageMessage,
    VaultMessage,
    WireMessage,
)

log = logging.getLogger(__name__)

DROPPED = Counter(
    "volt_wire_dropped_total",
    "Wire messages dropped because they could not be decoded",
    ["family", "reason"],
)

T = TypeVar("T")


class WireError(Exception):
    reason = "wire_error"


class MalformedMessage(WireError):
    reason = "malformed"


class UnsupportedVersion(WireError):
    reason = "unsupported_version"


_encoder = msgspec.msgpack.Encoder()


def encode(message: WireMessage) -> bytes:
    return _encoder.encode(message)


class FamilyDecoder(Generic[T]):
    """One prebuilt typed decoder per subject family."""

    def __init__(self, family: str, message_type: Any) -> None:
        self.family = family
        self._decoder: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(message_type)

    def decode(self, data: bytes) -> T:
        try:
            message: T = self._decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError, ValueError) as exc:
            # ValueError: msgpack strings that are not UTF-8 (UnicodeDecodeError)
            raise self._version_error(data) or MalformedMessage(
                f"{self.family}: {exc}"
            ) from exc
        version = getattr(message, "v", WIRE_VERSION)
        if version != WIRE_VERSION:
            raise UnsupportedVersion(f"{self.family}: schema version {version}")
        return message

    def _version_error(self, data: bytes) -> UnsupportedVersion | None:
        # A newer peer may send a message this build cannot validate; say so
        # precisely rather than calling it malformed.
        try:
            raw = msgspec.msgpack.decode(data)
        except (msgspec.DecodeError, ValueError):
            return None
        if isinstance(raw, dict) and raw.get("v", WIRE_VERSION) != WIRE_VERSION:
            return UnsupportedVersion(f"{self.family}: schema version {raw.get('v')!r}")
        return None

    def decode_or_drop(self, data: bytes) -> T | None:
        """Decode, or count and drop bad bytes (returning ``None``)."""
        try:
            return self.decode(data)
        except WireError as exc:
            DROPPED.labels(self.family, exc.reason).inc()
            log.warning("dropped wire message", extra={"family": self.family, "reason": exc.reason})
            return None


NODE: FamilyDecoder[NodeMessage] = FamilyDecoder("node", NodeMessage)
SCHEDULER: FamilyDecoder[SchedulerMessage] = FamilyDecoder("scheduler", SchedulerMessage)
INFERENCE: FamilyDecoder[InferenceMessage] = FamilyDecoder("inference", InferenceMessage)
REPLY: FamilyDecoder[ReplyMessage] = FamilyDecoder("reply", ReplyMessage)
REPLIES: FamilyDecoder[BatchedReplyMessage] = FamilyDecoder("reply", BatchedReplyMessage)
"""What the API reads on its reply subjects: one reply, or a batch of them."""
USAGE: FamilyDecoder[UsageMessage] = FamilyDecoder("usage", UsageMessage)
IDENTITY: FamilyDecoder[IdentityMessage] = FamilyDecoder("identity", IdentityMessage)
ATTEST: FamilyDecoder[AttestMessage] = FamilyDecoder("attest", AttestMessage)
FORGE: FamilyDecoder[ForgeMessage] = FamilyDecoder("forge", ForgeMessage)
VAULT: FamilyDecoder[VaultMessage] = FamilyDecoder("vault", VaultMessage)
FINETUNE: FamilyDecoder[FinetuneMessage] = FamilyDecoder("finetune", FinetuneMessage)
