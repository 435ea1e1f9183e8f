"""A rack's attestation report: evidence a tenant can check without trusting Volt's API.

Per node, the latest measured-boot verdict of the node-trust verifier
(``volt/attestation/verifier.py``: PCR values, the policy and the approved
versions matched, quote time, nonce, findings), each still carrying the
verifier's own Ed25519 signature. A node with no verdict for its current boot
is ``not_attested`` — never shown as passed.

The whole report is a JWS (compact, ``EdDSA``) signed with the verifier's key,
whose public half is published as a JWKS at ``/.well-known/volt/verifier-keys``.
A tenant fetches that once, then checks any report offline with any JOSE
library (``verify_report`` here, ``volt vault attestation RACK --verify``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet, OKPKey

from volt.attestation.verifier import SignedVerdict

ALGORITHM = "Ed25519"
TYPE = "volt-attestation-report+jws"


class ReportInvalid(Exception):
    """The report's signature does not check out against the published keys."""


def node_attestation(name: str, signed: SignedVerdict | None, booted_at: float | None,
                     now: float, ttl_s: float) -> dict[str, Any]:
    """One node's entry: its state and, when there is one, the signed verdict."""
    if signed is None:
        return {"node": name, "state": "not_attested", "verdict": None}
    verdict_at = signed.verdict.time_ms / 1000
    if booted_at is not None and verdict_at < booted_at:
        # The verdict is of an earlier boot (before this tenant's provisioning).
        return {"node": name, "state": "not_attested", "verdict": None}
    state = "passed" if signed.verdict.passed else "failed"
    if state == "passed" and now - verdict_at > ttl_s:
        state = "expired"
    return {"node": name, "state": state, "verdict": msgspec.to_builtins(signed)}


def build_report(rack_id: str, org_id: str, nodes: list[tuple[str, float | None]],
                 verdict_of: Callable[[str], SignedVerdict | None], *, now: float,
                 ttl_s: float) -> dict[str, Any]:
    entries = [node_attestation(name, verdict_of(name), booted_at, now, ttl_s)
               for name, booted_at in nodes]
    return {"rack_id": rack_id, "org_id": org_id, "generated_at": int(now),
            "verdict_ttl_s": int(ttl_s),
            "all_passed": bool(entries) and all(e["state"] == "passed" for e in entries),
            "nodes": entries}


def public_jwk(key: Ed25519PrivateKey) -> dict[str, Any]:
    jwk = OKPKey.import_key(key)
    public = dict(jwk.as_dict(private=False))
    public.update({"kid": jwk.thumbprint(), "use": "sig", "alg": ALGORITHM})
    return public


def sign_report(report: dict[str, Any], key: Ed25519PrivateKey) -> str:
    jwk = OKPKey.import_key(key)
    payload = json.dumps(report, sort_keys=True, separators=(",", ":")).encode()
    return jws.serialize_compact({"alg": ALGORITHM, "kid": jwk.thumbprint(), "typ": TYPE},
                                 payload, jwk, algorithms=[ALGORITHM])


def verify_report(token: str, jwks: dict[str, Any]) -> dict[str, Any]:
    """The report, if ``token`` is signed by one of ``jwks``'s keys (its ``kid``)."""
    try:
        keys = KeySet.import_key_set(jwks)  # type: ignore[arg-type]
        header = jws.extract_compact(token.encode()).headers()
        key = keys.get_by_kid(str(header.get("kid")))
        verified = jws.deserialize_compact(token, key, algorithms=[ALGORITHM])
    except (JoseError, ValueError, KeyError, TypeError) as exc:
        raise ReportInvalid(f"the report's signature does not verify: {exc}") from exc
    report: dict[str, Any] = json.loads(verified.payload)
    return report
