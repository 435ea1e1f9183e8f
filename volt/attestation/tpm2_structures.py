"""The TPM 2.0 structures a verifier reads, parsed in pure Python (no TPM needed).

TPM structures are big-endian (TPM 2.0 Part 2). Only what verification needs:

* ``TPMS_ATTEST`` of a quote: magic, type, the signer's qualified name, the
  nonce (``extraData``), the clock (reset and restart counts), the PCR
  selection and the digest of the selected PCRs;
* ``TPMT_PUBLIC`` of an attestation key: type, name algorithm, attributes,
  scheme and public key, and its Name (``nameAlg || H(TPMT_PUBLIC)``);
* ``TPMT_SIGNATURE``: RSASSA (PKCS#1 v1.5) or ECDSA, over SHA-256.

Malformed input raises ``StructureError``, never an ``IndexError``.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

TPM_GENERATED_VALUE = 0xFF544347
TPM_ST_ATTEST_QUOTE = 0x8018
TPM_ALG_RSA = 0x0001
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA256 = 0x000B
TPM_ALG_SHA384 = 0x000C
TPM_ALG_NULL = 0x0010
TPM_ALG_RSASSA = 0x0014
TPM_ALG_ECDSA = 0x0018
TPM_ALG_ECC = 0x0023
TPM_ECC_NIST_P256 = 0x0003
TPM_RH_ENDORSEMENT = 0x4000000B

HASHES = {TPM_ALG_SHA1: "sha1", TPM_ALG_SHA256: "sha256", TPM_ALG_SHA384: "sha384"}

# TPMA_OBJECT bits (Part 2, 8.3)
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN_ENCRYPT = 1 << 18


class StructureError(ValueError):
    """Bytes that are not the TPM structure they claim to be."""


class Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, count: int) -> bytes:
        if count < 0 or self.offset + count > len(self.data):
            raise StructureError(f"truncated: wanted {count} bytes at {self.offset}")
        chunk = self.data[self.offset: self.offset + count]
        self.offset += count
        return chunk

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def u64(self) -> int:
        return int(struct.unpack(">Q", self.take(8))[0])

    def sized(self) -> bytes:
        """A TPM2B: a UINT16 size, then that many bytes."""
        return self.take(self.u16())

    def done(self) -> None:
        if self.offset != len(self.data):
            raise StructureError(f"{len(self.data) - self.offset} bytes left over")


@dataclass(frozen=True, slots=True)
class PcrSelection:
    hash_alg: int
    pcrs: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Attest:
    """A quote's ``TPMS_ATTEST``."""

    qualified_signer: bytes
    extra_data: bytes
    clock: int
    reset_count: int
    restart_count: int
    safe: bool
    firmware_version: int
    selections: tuple[PcrSelection, ...]
    pcr_digest: bytes


def parse_attest(data: bytes) -> Attest:
    reader = Reader(data)
    magic, kind = reader.u32(), reader.u16()
    if magic != TPM_GENERATED_VALUE:
        raise StructureError(f"magic {magic:#x} is not TPM_GENERATED_VALUE")
    if kind != TPM_ST_ATTEST_QUOTE:
        raise StructureError(f"type {kind:#x} is not a quote")
    qualified_signer, extra_data = reader.sized(), reader.sized()
    clock, reset_count, restart_count, safe = reader.u64(), reader.u32(), reader.u32(), reader.u8()
    firmware_version = reader.u64()
    selections = []
    for _ in range(reader.u32()):
        hash_alg, size = reader.u16(), reader.u8()
        bitmap = reader.take(size)
        pcrs = tuple(byte * 8 + bit for byte, value in enumerate(bitmap)
                     for bit in range(8) if value & (1 << bit))
        selections.append(PcrSelection(hash_alg, pcrs))
    digest = reader.sized()
    reader.done()
    return Attest(qualified_signer, extra_data, clock, reset_count, restart_count, bool(safe),
                  firmware_version, tuple(selections), digest)


@dataclass(frozen=True, slots=True)
class PublicKey:
    """An attestation key's ``TPMT_PUBLIC``."""

    raw: bytes
    key_type: int
    name_alg: int
    attributes: int
    scheme: int
    scheme_hash: int
    rsa_modulus: bytes = b""
    rsa_exponent: int = 65537
    ecc_curve: int = 0
    ecc_x: bytes = b""
    ecc_y: bytes = b""

    @property
    def name(self) -> bytes:
        """The key's Name: its name algorithm, then the hash of ``TPMT_PUBLIC``."""
        return struct.pack(">H", self.name_alg) + hashlib.new(
            HASHES[self.name_alg], self.raw).digest()

    def qualified_name(self, parent_qualified_name: bytes) -> bytes:
        """QN = nameAlg || H(QN(parent) || Name) (Part 1, 16.4)."""
        return struct.pack(">H", self.name_alg) + hashlib.new(
            HASHES[self.name_alg], parent_qualified_name + self.name).digest()


def _sym_def(reader: Reader) -> None:
    if reader.u16() != TPM_ALG_NULL:
        reader.u16()  # key bits
        reader.u16()  # mode


def parse_public(data: bytes) -> PublicKey:
    """A ``TPMT_PUBLIC`` (or a ``TPM2B_PUBLIC``, whose size prefix is dropped)."""
    if len(data) >= 2 and struct.unpack(">H", data[:2])[0] == len(data) - 2:
        data = data[2:]
    reader = Reader(data)
    key_type, name_alg, attributes = reader.u16(), reader.u16(), reader.u32()
    if name_alg not in HASHES:
        raise StructureError(f"name algorithm {name_alg:#x} is not supported")
    reader.sized()  # authPolicy
    if key_type == TPM_ALG_RSA:
        _sym_def(reader)
        scheme = reader.u16()
        scheme_hash = reader.u16() if scheme != TPM_ALG_NULL else TPM_ALG_NULL
        reader.u16()  # key bits
        exponent = reader.u32() or 65537
        modulus = reader.sized()
        reader.done()
        return PublicKey(data, key_type, name_alg, attributes, scheme, scheme_hash,
                         rsa_modulus=modulus, rsa_exponent=exponent)
    if key_type == TPM_ALG_ECC:
        _sym_def(reader)
        scheme = reader.u16()
        scheme_hash = reader.u16() if scheme != TPM_ALG_NULL else TPM_ALG_NULL
        curve = reader.u16()
        if reader.u16() != TPM_ALG_NULL:  # kdf
            reader.u16()
        x, y = reader.sized(), reader.sized()
        reader.done()
        return PublicKey(data, key_type, name_alg, attributes, scheme, scheme_hash,
                         ecc_curve=curve, ecc_x=x, ecc_y=y)
    raise StructureError(f"key type {key_type:#x} is not supported")


@dataclass(frozen=True, slots=True)
class Signature:
    alg: int
    hash_alg: int
    rsa: bytes = b""
    ecdsa_r: bytes = b""
    ecdsa_s: bytes = b""


def parse_signature(data: bytes) -> Signature:
    reader = Reader(data)
    alg, hash_alg = reader.u16(), reader.u16()
    if alg == TPM_ALG_RSASSA:
        signature = Signature(alg, hash_alg, rsa=reader.sized())
    elif alg == TPM_ALG_ECDSA:
        signature = Signature(alg, hash_alg, ecdsa_r=reader.sized(), ecdsa_s=reader.sized())
    else:
        raise StructureError(f"signature algorithm {alg:#x} is not supported")
    reader.done()
    return signature


def pcr_digest(values: list[bytes], hash_alg: int = TPM_ALG_SHA256) -> bytes:
    """What a quote's ``pcrDigest`` is: the hash of the selected PCRs' values, in order."""
    return hashlib.new(HASHES[hash_alg], b"".join(values)).digest()
