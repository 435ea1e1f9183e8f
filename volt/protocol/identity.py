"""Request and response types of the identity routes: API keys, the caller,
the audit log, and the OAuth device grant. The API validates with them,
``/openapi.yaml`` is generated from them, and the SDK decodes with them.

Times are Unix seconds, as in OpenAI's objects, except the audit log's
milliseconds (its events are hashed, so they carry no floats).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from volt.wire import AuditEvent

RoleName = Literal["owner", "admin", "member", "viewer"]
ScopeName = Literal["read", "write"]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
Limit = Annotated[int, msgspec.Meta(ge=1, le=100_000_000)]


class KeyLimits(msgspec.Struct, kw_only=True):
    requests_per_minute: Limit | None = None
    tokens_per_minute: Limit | None = None


class CreateApiKeyRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    name: Name
    scopes: Annotated[list[ScopeName], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["read", "write"])
    mode: Literal["live", "test"] = "live"
    """``test`` keys (``volt_sk_test_``) reach only test capacity and are never billed."""
    role: RoleName = "member"
    """What the key may do in the org; never more than its creator's role."""
    expires_at: Annotated[int, msgspec.Meta(gt=0)] | None = None
    """Unix seconds; absent: the key does not expire."""
    limits: KeyLimits | None = None


class ApiKey(msgspec.Struct, kw_only=True):
    id: str
    name: str
    org_id: str
    mode: Literal["live", "test"]
    role: RoleName
    scopes: list[ScopeName]
    redacted_key: str
    """The key's prefix and id; never its secret."""
    created_at: int
    created_by: str
    last_used_at: int | None
    expires_at: int | None
    revoked_at: int | None
    limits: KeyLimits
    object: Literal["api_key"] = "api_key"


class CreatedApiKey(ApiKey, kw_only=True):
    key: str
    """The secret key, shown once: Volt keeps only a keyed hash of it."""


class ApiKeyList(msgspec.Struct, kw_only=True):
    data: list[ApiKey]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class Me(msgspec.Struct, kw_only=True):
    """Who the caller is, as the API sees it."""

    spiffe_id: str
    org_id: str
    org_name: str
    role: RoleName
    scopes: list[ScopeName]
    auth_method: Literal["api_key", "device_token", "oidc_session"]
    credential_id: str
    mode: Literal["live", "test"]
    object: Literal["principal"] = "principal"


class AuditRecord(msgspec.Struct, kw_only=True):
    seq: int
    """The event's position in the log (its leaf index)."""
    event: AuditEvent
    leaf: str
    """The exact bytes that were hashed into the log (msgpack, base64). Verify
    these, and that they decode to ``event``: a later release may add fields
    to events, so re-encoding ``event`` is not guaranteed to give them back."""
    inclusion_proof: list[str] | None
    """Base64 hashes proving the event is in the tree of ``tree_size`` leaves
    (RFC 9162 §2.1.3); null when no checkpoint covers it yet."""


class AuditEventList(msgspec.Struct, kw_only=True):
    data: list[AuditRecord]
    tree_size: int
    """The checkpoint the proofs refer to (``GET /v1/audit/checkpoint``)."""
    has_more: bool
    last_seq: int | None
    object: Literal["list"] = "list"


class Checkpoint(msgspec.Struct, kw_only=True):
    """A signed tree head of the audit log."""

    tree_size: int
    root_hash: str
    time_ms: int
    key_id: str
    signature: str
    """Ed25519 over ``volt-audit-log/v1\\n<tree_size>\\n<root_hash>\\n<time_ms>\\n`` (base64)."""
    public_key: str
    """The raw Ed25519 public key (base64); pin it on first use."""
    object: Literal["audit.checkpoint"] = "audit.checkpoint"


class ConsistencyProof(msgspec.Struct, kw_only=True):
    first: int
    second: int
    proof: list[str]
    object: Literal["audit.consistency_proof"] = "audit.consistency_proof"


# --- OAuth 2.0 (RFC 6749, RFC 8628): OAuth's own shapes, for OAuth clients ---------


class DeviceAuthorization(msgspec.Struct, kw_only=True):
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str
    expires_in: int
    interval: int


class TokenResponse(msgspec.Struct, kw_only=True):
    access_token: str
    token_type: Literal["Bearer"]
    expires_in: int
    refresh_token: str
    scope: str


class OAuthError(msgspec.Struct, kw_only=True):
    error: str
    error_description: str
