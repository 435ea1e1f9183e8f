"""Enrolment by credential activation: MakeCredential on the verifier, in pure Python.

The verifier encrypts a random secret so that only a TPM holding *this*
endorsement key can recover it, and only for *this* attestation key (its Name
is bound in): TPM2_ActivateCredential on the node succeeds only if both keys
live in the same TPM. A node that returns the secret has proved that its
attestation key is a TPM key beside an EK whose certificate chains to a
manufacturer CA (``ek.py``). TPM 2.0 Part 1 §24 (credential protection) and
Part 1 §11.4.10 (KDFa); RSA endorsement keys (the TCG default EK template).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import struct
from dataclasses import dataclass

from cryptography.hazmat.decrepit.ciphers.modes import CFB  # TPM 2.0 fixes CFB for this
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from volt.attestation.tpm2_structures import TPM_ALG_RSA, TPM_ALG_SHA256, PublicKey, parse_public


def kdfa(key: bytes, label: bytes, context_u: bytes, context_v: bytes, bits: int) -> bytes:
    """KDFa with HMAC-SHA256 (counter mode, SP 800-108); ``label`` without its NUL."""
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        out += hmac.new(key, struct.pack(">I", counter) + label + b"\0" + context_u + context_v
                        + struct.pack(">I", bits), hashlib.sha256).digest()
        counter += 1
    return out[: bits // 8]


@dataclass(frozen=True, slots=True)
class Challenge:
    credential_blob: bytes
    """``TPM2B_ID_OBJECT``."""
    secret: bytes
    """``TPM2B_ENCRYPTED_SECRET``."""


def make_credential(ek_public: bytes, object_name: bytes, credential: bytes) -> Challenge:
    """What TPM2_MakeCredential makes: ``credential`` sealed to the EK and bound
    to the attestation key's Name. The EK must be RSA with SHA-256 and AES-128-CFB
    (the TCG's default EK template, which swtpm and hardware TPMs use)."""
    ek: PublicKey = parse_public(ek_public)
    if ek.key_type != TPM_ALG_RSA or ek.name_alg != TPM_ALG_SHA256:
        raise ValueError("only RSA endorsement keys with SHA-256 names are supported")
    seed = os.urandom(32)
    public_key = rsa.RSAPublicNumbers(ek.rsa_exponent,
                                      int.from_bytes(ek.rsa_modulus, "big")).public_key()
    encrypted_seed = public_key.encrypt(seed, padding.OAEP(
        mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=b"IDENTITY\0"))
    symmetric = kdfa(seed, b"STORAGE", object_name, b"", 128)
    plain = struct.pack(">H", len(credential)) + credential  # a TPM2B_DIGEST
    encryptor = Cipher(algorithms.AES(symmetric), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(plain) + encryptor.finalize()
    hmac_key = kdfa(seed, b"INTEGRITY", b"", b"", 256)
    outer = hmac.new(hmac_key, enc_identity + object_name, hashlib.sha256).digest()
    id_object = struct.pack(">H", len(outer)) + outer + enc_identity
    return Challenge(credential_blob=struct.pack(">H", len(id_object)) + id_object,
                     secret=struct.pack(">H", len(encrypted_seed)) + encrypted_seed)
