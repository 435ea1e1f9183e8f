"""Who may call what, and what the audit log records of it: one table, every route.

Each route of the API has one ``Rule``: how the caller authenticates
(``bearer``: an API key or an OAuth access token; ``session``: a console
session cookie; ``public``: nobody), the scope its credential must carry
(``read`` for reading, ``write`` for anything that changes or spends), the
least org role, and the audit level (Kubernetes' audit policy levels are the
model: ``none`` records nothing, ``metadata`` who/what/when/status,
``request`` also a SHA-256 of the body; never the body itself).

A route missing from the table is refused (and a test fails: every route the
app serves must be here, and nothing else).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from volt.identity.principal import Role, Scope


class AuditLevel(StrEnum):
    NONE = "none"
    METADATA = "metadata"
    REQUEST = "request"


Auth = Literal["bearer", "session", "public"]


@dataclass(frozen=True, slots=True)
class Rule:
    auth: Auth
    scope: Scope | None = None
    role: Role = Role.VIEWER
    audit: AuditLevel = AuditLevel.METADATA


def _read(role: Role = Role.VIEWER, audit: AuditLevel = AuditLevel.METADATA) -> Rule:
    return Rule("bearer", Scope.READ, role, audit)


def _write(role: Role = Role.MEMBER, audit: AuditLevel = AuditLevel.REQUEST) -> Rule:
    return Rule("bearer", Scope.WRITE, role, audit)


_PUBLIC = Rule("public", audit=AuditLevel.NONE)
_FINE_TUNING = {
    (method, base + suffix): rule
    for base in ("/v1/fine-tuning/jobs", "/v1/fine_tuning/jobs")
    for method, suffix, rule in (("POST", "", _write()), ("GET", "", _read()),
                                 ("GET", "/{job_id}", _read()),
                                 ("POST", "/{job_id}/cancel", _write()),
                                 ("GET", "/{job_id}/events", _read()),
                                 ("GET", "/{job_id}/checkpoints", _read()))
}

RULES: dict[tuple[str, str], Rule] = {
    # Spark
    ("POST", "/v1/chat/completions"): _write(),
    ("POST", "/v1/completions"): _write(),
    ("POST", "/v1/embeddings"): _write(),
    ("GET", "/v1/models"): _read(),
    ("GET", "/v1/models/{model_id}"): _read(),
    # Deleting a tuned model breaks whatever calls it, for good: an admin's.
    ("DELETE", "/v1/models/{model_id}"): _write(Role.ADMIN),
    **_FINE_TUNING,
    # Training files are customer data: reading one back is a member's, like a write.
    ("POST", "/v1/files"): _write(),
    ("GET", "/v1/files"): _read(),
    ("GET", "/v1/files/{file_id}"): _read(),
    ("GET", "/v1/files/{file_id}/content"): _read(Role.MEMBER),
    ("DELETE", "/v1/files/{file_id}"): _write(),
    # Forge: leases spend money and hand out cluster access, so they are
    # members' (writes) and recorded with a digest of the request.
    ("GET", "/v1/forge/availability"): _read(),
    ("POST", "/v1/forge/leases"): _write(),
    ("GET", "/v1/forge/leases"): _read(),
    ("GET", "/v1/forge/leases/{lease_id}"): _read(),
    ("DELETE", "/v1/forge/leases/{lease_id}"): _write(),
    ("POST", "/v1/forge/leases/{lease_id}/kubeconfig"): _write(),
    ("DELETE", "/v1/forge/leases/{lease_id}/kubeconfigs/{kubeconfig_id}"): _write(),
    # Vault: a reservation is a whole rack; releasing it wipes the tenant's
    # disks. Both are members' writes, recorded with a digest of the request.
    ("POST", "/v1/vault/racks"): _write(),
    ("GET", "/v1/vault/racks"): _read(),
    ("GET", "/v1/vault/racks/{rack_id}"): _read(),
    ("DELETE", "/v1/vault/racks/{rack_id}"): _write(),
    ("POST", "/v1/vault/racks/{rack_id}/redfish-credentials"): _write(),
    ("DELETE", "/v1/vault/racks/{rack_id}/redfish-credentials/{credential_id}"): _write(),
    ("GET", "/v1/vault/racks/{rack_id}/attestation"): _read(),
    # The rack's whole cluster PKI: members only (like a write), never viewers.
    ("GET", "/v1/vault/racks/{rack_id}/talos-config"): _read(Role.MEMBER),
    # Billing and tenancy
    ("GET", "/v1/usage"): _read(),
    ("GET", "/v1/me"): _read(),
    ("GET", "/v1/orgs/{org_id}/api-keys"): _read(Role.ADMIN),
    ("POST", "/v1/orgs/{org_id}/api-keys"): _write(Role.ADMIN),
    ("GET", "/v1/orgs/{org_id}/api-keys/{key_id}"): _read(Role.ADMIN),
    ("DELETE", "/v1/orgs/{org_id}/api-keys/{key_id}"): _write(Role.ADMIN),
    ("GET", "/v1/orgs/{org_id}/audit-events"): _read(Role.ADMIN),
    ("GET", "/v1/audit/checkpoint"): _read(),
    ("GET", "/v1/audit/consistency"): _read(),
    # OAuth 2.0 device authorization grant (RFC 8628): the client has no
    # credential yet; the grant itself is the proof.
    ("POST", "/oauth/device/code"): Rule("public", audit=AuditLevel.METADATA),
    ("POST", "/oauth/token"): Rule("public", audit=AuditLevel.METADATA),
    # The console: OIDC sign-in, then a server-side session.
    ("GET", "/console/login"): Rule("public", audit=AuditLevel.METADATA),
    ("GET", "/console/callback"): Rule("public", audit=AuditLevel.METADATA),
    ("GET", "/console"): Rule("session", Scope.READ, Role.VIEWER),
    ("POST", "/console/logout"): Rule("session", Scope.READ, Role.VIEWER),
    ("POST", "/console/orgs/{org_id}/api-keys"): Rule("session", Scope.WRITE, Role.ADMIN,
                                                     AuditLevel.REQUEST),
    ("POST", "/console/orgs/{org_id}/api-keys/{key_id}/revoke"): Rule(
        "session", Scope.WRITE, Role.ADMIN, AuditLevel.REQUEST),
    ("GET", "/device"): Rule("session", Scope.READ, Role.VIEWER),
    ("POST", "/device"): Rule("session", Scope.WRITE, Role.MEMBER, AuditLevel.REQUEST),
    # Operations
    ("GET", "/healthz"): _PUBLIC,
    ("GET", "/readyz"): _PUBLIC,
    ("GET", "/openapi.yaml"): _PUBLIC,
    # Anyone may check a signed attestation report: the verifier's public keys.
    ("GET", "/.well-known/volt/verifier-keys"): _PUBLIC,
    ("GET", "/metrics"): _PUBLIC,
}


def rule_for(method: str, template: str) -> Rule | None:
    return RULES.get((method.upper(), template))
