"""The identity routes: who am I, an org's API keys, and the audit log.

Authentication and the route's rule (scope, role, the caller's own org) were
checked before these run (``app.identify``); another org's key id answers 404
from the store lookup, which only finds the caller's own.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

import msgspec
from cryptography.hazmat.primitives import serialization
from quart import Quart, Response, g, request

from volt.control_api.errors import InvalidRequest, NotFound
from volt.control_api.serving import decode_request
from volt.identity import Identity, Principal, Role, Scope
from volt.identity.api_keys import IssuedKey, KeyRecord
from volt.identity.principal import Limits
from volt.protocol.identity import (
    ApiKey,
    ApiKeyList,
    AuditEventList,
    AuditRecord,
    Checkpoint,
    ConsistencyProof,
    CreateApiKeyRequest,
    CreatedApiKey,
    KeyLimits,
    Me,
)
from volt.wire import AuditEvent

_encoder = msgspec.json.Encoder()
_create_decoder = msgspec.json.Decoder(CreateApiKeyRequest)
DEFAULT_PAGE = 20
MAX_PAGE = 100


def _json(value: object, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status=status, content_type="application/json")


def _unix(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def key_object(record: KeyRecord) -> ApiKey:
    return ApiKey(
        id=record.id, name=record.name, org_id=record.org_id, mode=record.mode,
        role=record.role.value, scopes=sorted(s.value for s in record.scopes),
        redacted_key=record.prefix, created_at=_unix(record.created_at) or 0,
        created_by=record.created_by, last_used_at=_unix(record.last_used_at),
        expires_at=_unix(record.expires_at), revoked_at=_unix(record.revoked_at),
        limits=KeyLimits(requests_per_minute=record.limits.requests_per_minute,
                         tokens_per_minute=record.limits.tokens_per_minute),
    )


def created_key_object(issued: IssuedKey) -> CreatedApiKey:
    plain = key_object(issued.record)
    return CreatedApiKey(key=issued.key, **msgspec.structs.asdict(plain))


def page_limit(args: Mapping[str, str]) -> int:
    text = args.get("limit", str(DEFAULT_PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidRequest(f"`limit` must be a whole number from 1 to {MAX_PAGE}.",
                             param="limit")
    return int(text)


def _int_arg(args: Mapping[str, str], name: str, default: int | None = None) -> int | None:
    text = args.get(name)
    if text is None or text == "":
        return default
    if not text.isdigit():
        raise InvalidRequest(f"`{name}` must be a whole number.", param=name)
    return int(text)


def event_filter(args: Mapping[str, str]) -> Callable[[AuditEvent], bool]:
    """The audit-events query's filters, as one predicate (all must hold)."""
    since, until = _int_arg(args, "since"), _int_arg(args, "until")
    status = _int_arg(args, "status")
    exact = {name: args[name] for name in ("method", "route", "request_id", "auth_id")
             if args.get(name)}

    def match(event: AuditEvent) -> bool:
        return ((since is None or event.time_ms >= since)
                and (until is None or event.time_ms < until)
                and (status is None or event.status == status)
                and all(getattr(event, name) == value for name, value in exact.items()))

    return match


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode()


async def create_key(identity: Identity, principal: Principal, body: bytes) -> IssuedKey:
    """The POST body, validated, then the key (shared by the API and the console)."""
    req = decode_request(_create_decoder, body)
    limits = req.limits or KeyLimits()
    return await identity.create_key(
        principal, name=req.name, mode=req.mode, role=Role(req.role),
        scopes=frozenset(Scope(s) for s in req.scopes),
        expires_at=datetime.fromtimestamp(req.expires_at, UTC) if req.expires_at else None,
        limits=Limits(requests_per_minute=limits.requests_per_minute,
                      tokens_per_minute=limits.tokens_per_minute))


def register_identity_routes(app: Quart, identity: Identity) -> None:
    @app.get("/v1/me")
    async def me() -> Response:
        principal: Principal = g.principal
        return _json(Me(
            spiffe_id=principal.spiffe_id, org_id=principal.org_id,
            org_name=principal.org_name, role=principal.role.value,
            scopes=sorted(s.value for s in principal.scopes),
            auth_method=principal.method.value,
            credential_id=principal.credential_id, mode=principal.mode))

    @app.get("/v1/orgs/<org_id>/api-keys")
    async def list_keys(org_id: str) -> Response:
        limit = page_limit(request.args)
        try:
            keys, has_more = await identity.keys.page(org_id, limit=limit,
                                                      after=request.args.get("after"))
        except LookupError:
            raise InvalidRequest("`after` is not a key of this organization.",
                                 param="after") from None
        return _json(ApiKeyList(data=[key_object(k) for k in keys],
                                first_id=keys[0].id if keys else None,
                                last_id=keys[-1].id if keys else None, has_more=has_more))

    @app.post("/v1/orgs/<org_id>/api-keys")
    async def new_key(org_id: str) -> Response:
        body: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
        issued = await create_key(identity, g.principal, body)
        return _json(created_key_object(issued), status=201)

    @app.get("/v1/orgs/<org_id>/api-keys/<key_id>")
    async def get_key(org_id: str, key_id: str) -> Response:
        record = await identity.keys.get(org_id, key_id)
        if record is None:
            raise NotFound(f"No API key {key_id}.", code="api_key_not_found")
        return _json(key_object(record))

    @app.delete("/v1/orgs/<org_id>/api-keys/<key_id>")
    async def revoke_key(org_id: str, key_id: str) -> Response:
        await identity.revoke_key(org_id, key_id)
        record = await identity.keys.get(org_id, key_id)
        assert record is not None
        return _json(key_object(record))

    @app.get("/v1/orgs/<org_id>/audit-events")
    async def audit_events(org_id: str) -> Response:
        limit = page_limit(request.args)
        after = _int_arg(request.args, "after", -1)
        checkpoint = await identity.audit_log.latest_checkpoint()
        size = checkpoint.tree_size if checkpoint else 0
        wanted = _int_arg(request.args, "tree_size", size)
        assert after is not None
        assert wanted is not None
        if wanted > size:
            raise InvalidRequest(f"`tree_size` must be at most the latest checkpoint's ({size}).",
                                 param="tree_size")
        match = event_filter(request.args)
        events, last_seq, has_more = await identity.audit_log.search(
            org_id=org_id, after_seq=after, limit=limit, match=match)
        covered = [e.seq for e in events if e.seq < wanted]
        proofs = dict(zip(covered, await identity.audit_log.inclusion_proofs(covered, wanted),
                          strict=True)) if covered else {}
        return _json(AuditEventList(
            data=[AuditRecord(seq=e.seq, event=e.event, leaf=_b64(e.body),
                              inclusion_proof=[_b64(h) for h in proofs[e.seq]]
                              if e.seq in proofs else None)
                  for e in events],
            tree_size=wanted, has_more=has_more, last_seq=last_seq))

    @app.get("/v1/audit/checkpoint")
    async def checkpoint() -> Response:
        latest = await identity.audit_log.latest_checkpoint()
        public = await identity.audit_log.public_key(latest.key_id) if latest else None
        if latest is None or public is None:
            raise NotFound("The audit log has no checkpoint yet.", code="no_checkpoint")
        return _json(Checkpoint(
            tree_size=latest.tree_size, root_hash=_b64(latest.root_hash),
            time_ms=latest.time_ms, key_id=latest.key_id, signature=_b64(latest.signature),
            public_key=_b64(public.public_bytes(serialization.Encoding.Raw,
                                                serialization.PublicFormat.Raw))))

    @app.get("/v1/audit/consistency")
    async def consistency() -> Response:
        first = _int_arg(request.args, "first")
        second = _int_arg(request.args, "second")
        if first is None or second is None:
            raise InvalidRequest("Give `first` and `second` tree sizes.", param="first")
        latest = await identity.audit_log.latest_checkpoint()
        size = latest.tree_size if latest else 0
        if not 0 < first <= second <= size:
            raise InvalidRequest(f"Need 0 < first <= second <= {size} (the latest checkpoint).",
                                 param="second")
        proof = await identity.audit_log.consistency_proof(first, second)
        return _json(ConsistencyProof(first=first, second=second,
                                      proof=[_b64(h) for h in proof]))
