"""Every call the SDK makes, described once: method, path, parameters, and the
msgspec type that decodes the answer. ``Client`` and ``AsyncClient`` only
send them (``_client.py``), so the sync and async APIs cannot drift apart.

The types are the API's own (``volt/protocol``): the SDK has no second set
of models.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec

from volt.protocol.common import Model, ModelDeleted, ModelList
from volt.protocol.finetune import (
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    FineTuningJobCheckpointList,
    FineTuningJobEventList,
    FineTuningJobList,
)
from volt.protocol.forge import (
    Availability,
    CreateLeaseRequest,
    Kubeconfig,
    Lease,
    LeaseList,
    MintKubeconfigRequest,
)
from volt.protocol.identity import (
    ApiKey,
    ApiKeyList,
    AuditEventList,
    Checkpoint,
    ConsistencyProof,
    CreateApiKeyRequest,
    CreatedApiKey,
    DeviceAuthorization,
    KeyLimits,
    Me,
    TokenResponse,
)
from volt.protocol.usage import UsageReport
from volt.protocol.vault import (
    AttestationReport,
    Jwks,
    MintRedfishCredentialRequest,
    Rack,
    RackList,
    RedfishCredential,
    ReserveRackRequest,
    TalosConfig,
)

T = TypeVar("T")
DEVICE_GRANT_TYPE = "urn:ietf:params:oauth:grant-type:device_code"


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    returns: type[T]
    params: dict[str, str] = field(default_factory=dict)
    json: Any = None
    form: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes]] | None = None
    """Multipart parts: name -> (filename, bytes)."""
    authenticated: bool = True
    retry: bool = True
    """False for a call that must not run twice (creating a lease: a 503 may
    mean the scheduler did it but did not answer in time)."""


def _params(**values: object) -> dict[str, str]:
    return {k: str(v) for k, v in values.items() if v is not None}


def me() -> Call[Me]:
    return Call("GET", "/v1/me", Me)


def models_list() -> Call[ModelList]:
    return Call("GET", "/v1/models", ModelList)


def models_get(model_id: str) -> Call[Model]:
    return Call("GET", f"/v1/models/{model_id}", Model)


def models_delete(model_id: str) -> Call[ModelDeleted]:
    return Call("DELETE", f"/v1/models/{model_id}", ModelDeleted)


def usage(start: str | int | None = None, end: str | int | None = None,
          group_by: list[str] | None = None) -> Call[UsageReport]:
    return Call("GET", "/v1/usage", UsageReport, _params(
        start=start, end=end, group_by=",".join(group_by) if group_by else None))


def keys_list(org_id: str, *, limit: int = 20, after: str | None = None) -> Call[ApiKeyList]:
    return Call("GET", f"/v1/orgs/{org_id}/api-keys", ApiKeyList, _params(limit=limit, after=after))


def keys_create(org_id: str, name: str, *, scopes: list[str] | None = None, mode: str = "live",
                role: str = "member", expires_at: int | None = None,
                requests_per_minute: int | None = None,
                tokens_per_minute: int | None = None) -> Call[CreatedApiKey]:
    limits = KeyLimits(requests_per_minute=requests_per_minute,
                       tokens_per_minute=tokens_per_minute) \
        if requests_per_minute or tokens_per_minute else None
    body = msgspec.convert({"name": name, "scopes": scopes or ["read", "write"], "mode": mode,
                            "role": role, "expires_at": expires_at}, CreateApiKeyRequest)
    body = msgspec.structs.replace(body, limits=limits)
    return Call("POST", f"/v1/orgs/{org_id}/api-keys", CreatedApiKey,
                json=msgspec.to_builtins(body))


def keys_get(org_id: str, key_id: str) -> Call[ApiKey]:
    return Call("GET", f"/v1/orgs/{org_id}/api-keys/{key_id}", ApiKey)


def keys_revoke(org_id: str, key_id: str) -> Call[ApiKey]:
    return Call("DELETE", f"/v1/orgs/{org_id}/api-keys/{key_id}", ApiKey)


def audit_events(org_id: str, *, after: int | None = None, limit: int = 100,
                 tree_size: int | None = None,
                 filters: dict[str, str | int | None] | None = None) -> Call[AuditEventList]:
    """``filters``: since, until (Unix ms), method, route, status, request_id, auth_id."""
    return Call("GET", f"/v1/orgs/{org_id}/audit-events", AuditEventList,
                _params(after=after, limit=limit, tree_size=tree_size, **(filters or {})))


def audit_checkpoint() -> Call[Checkpoint]:
    return Call("GET", "/v1/audit/checkpoint", Checkpoint)


def audit_consistency(first: int, second: int) -> Call[ConsistencyProof]:
    return Call("GET", "/v1/audit/consistency", ConsistencyProof,
                _params(first=first, second=second))


def device_code(client_id: str, scope: str) -> Call[DeviceAuthorization]:
    return Call("POST", "/oauth/device/code", DeviceAuthorization,
                form={"client_id": client_id, "scope": scope}, authenticated=False)


def device_token(client_id: str, device_code: str) -> Call[TokenResponse]:
    return Call("POST", "/oauth/token", TokenResponse, form={
        "grant_type": DEVICE_GRANT_TYPE, "device_code": device_code, "client_id": client_id,
    }, authenticated=False)


def refresh(client_id: str, refresh_token: str) -> Call[TokenResponse]:
    return Call("POST", "/oauth/token", TokenResponse, form={
        "grant_type": "refresh_token", "refresh_token": refresh_token, "client_id": client_id,
    }, authenticated=False)


def forge_availability(metro: str | None = None, tier: str | None = None,
                       gpu_model: str | None = None) -> Call[Availability]:
    return Call("GET", "/v1/forge/availability", Availability,
                _params(metro=metro, tier=tier, gpu_model=gpu_model))


def forge_lease_create(gpu_model: str, gpu_count: int, metro: str, *, tier: str | None = None,
                       duration_s: int | None = None, ends_at: int | None = None,
                       starts_at: int | None = None,
                       egress_cidrs: list[str] | None = None) -> Call[Lease]:
    body = msgspec.convert({
        "gpu_model": gpu_model, "gpu_count": gpu_count, "metro": metro, "tier": tier,
        "duration_s": duration_s, "ends_at": ends_at, "starts_at": starts_at,
        "egress_cidrs": egress_cidrs or []}, CreateLeaseRequest)
    return Call("POST", "/v1/forge/leases", Lease, json=msgspec.to_builtins(body), retry=False)


def forge_lease_list(*, limit: int = 20, after: str | None = None,
                     state: str | None = None) -> Call[LeaseList]:
    return Call("GET", "/v1/forge/leases", LeaseList,
                _params(limit=limit, after=after, state=state))


def forge_lease_get(lease_id: str) -> Call[Lease]:
    return Call("GET", f"/v1/forge/leases/{lease_id}", Lease)


def forge_lease_terminate(lease_id: str) -> Call[Lease]:
    return Call("DELETE", f"/v1/forge/leases/{lease_id}", Lease)


def forge_kubeconfig(lease_id: str, ttl_s: int | None = None) -> Call[Kubeconfig]:
    body = msgspec.to_builtins(MintKubeconfigRequest(ttl_s=ttl_s))
    return Call("POST", f"/v1/forge/leases/{lease_id}/kubeconfig", Kubeconfig, json=body,
                retry=False)


def forge_kubeconfig_revoke(lease_id: str, kubeconfig_id: str) -> Call[Lease]:
    return Call("DELETE", f"/v1/forge/leases/{lease_id}/kubeconfigs/{kubeconfig_id}", Lease)


def vault_rack_reserve(metro: str, *, tier: str | None = None, gpu_model: str | None = None,
                       nodes: int | None = None,
                       talos_version: str | None = None) -> Call[Rack]:
    body = msgspec.convert({"metro": metro, "tier": tier, "gpu_model": gpu_model,
                            "nodes": nodes, "talos_version": talos_version}, ReserveRackRequest)
    return Call("POST", "/v1/vault/racks", Rack, json=msgspec.to_builtins(body), retry=False)


def vault_rack_list(*, limit: int = 20, after: str | None = None,
                    state: str | None = None) -> Call[RackList]:
    return Call("GET", "/v1/vault/racks", RackList,
                _params(limit=limit, after=after, state=state))


def vault_rack_get(rack_id: str) -> Call[Rack]:
    return Call("GET", f"/v1/vault/racks/{rack_id}", Rack)


def vault_rack_release(rack_id: str) -> Call[Rack]:
    return Call("DELETE", f"/v1/vault/racks/{rack_id}", Rack)


def vault_attestation(rack_id: str) -> Call[AttestationReport]:
    return Call("GET", f"/v1/vault/racks/{rack_id}/attestation", AttestationReport)


def vault_verifier_keys() -> Call[Jwks]:
    return Call("GET", "/.well-known/volt/verifier-keys", Jwks, authenticated=False)


def vault_talos_config(rack_id: str, node: str | None = None) -> Call[TalosConfig]:
    return Call("GET", f"/v1/vault/racks/{rack_id}/talos-config", TalosConfig,
                _params(node=node))


def vault_talos_files(rack_id: str, node: str | None = None,
                      format: str = "tar") -> Call[bytes]:
    return Call("GET", f"/v1/vault/racks/{rack_id}/talos-config", bytes,
                _params(node=node, format=format))


def vault_redfish_credential(rack_id: str, ttl_s: int | None = None
                             ) -> Call[RedfishCredential]:
    body = msgspec.to_builtins(MintRedfishCredentialRequest(ttl_s=ttl_s))
    return Call("POST", f"/v1/vault/racks/{rack_id}/redfish-credentials", RedfishCredential,
                json=body, retry=False)


def vault_redfish_credential_revoke(rack_id: str, credential_id: str) -> Call[Rack]:
    return Call("DELETE", f"/v1/vault/racks/{rack_id}/redfish-credentials/{credential_id}",
                Rack)


# --- files and fine-tuning (OpenAI's shapes) ------------------------------------

JOBS = "/v1/fine_tuning/jobs"


def file_upload(filename: str, data: bytes, metro: str | None) -> Call[FileObject]:
    return Call("POST", "/v1/files", FileObject, files={"file": (filename, data)},
                form=_params(purpose="fine-tune", metro=metro), retry=False)


def file_list(limit: int, after: str | None) -> Call[FileList]:
    return Call("GET", "/v1/files", FileList, params=_params(limit=limit, after=after))


def file_get(file_id: str) -> Call[FileObject]:
    return Call("GET", f"/v1/files/{file_id}", FileObject)


def file_content(file_id: str) -> Call[bytes]:
    return Call("GET", f"/v1/files/{file_id}/content", bytes)


def file_delete(file_id: str) -> Call[FileDeleted]:
    return Call("DELETE", f"/v1/files/{file_id}", FileDeleted)


def job_create(model: str, training_file: str, *, validation_file: str | None,
               suffix: str | None, seed: int | None, n_epochs: int | None,
               batch_size: int | None, learning_rate_multiplier: float | None,
               lora_rank: int | None, lora_alpha: int | None) -> Call[FineTuningJob]:
    hyper = {k: v for k, v in (("n_epochs", n_epochs), ("batch_size", batch_size),
                                ("learning_rate_multiplier", learning_rate_multiplier))
             if v is not None}
    lora = {k: v for k, v in (("lora_rank", lora_rank), ("lora_alpha", lora_alpha))
            if v is not None}
    body: dict[str, Any] = {"model": model, "training_file": training_file}
    for name, value in (("validation_file", validation_file), ("suffix", suffix),
                        ("seed", seed), ("hyperparameters", hyper or None),
                        ("volt", lora or None)):
        if value is not None:
            body[name] = value
    return Call("POST", JOBS, FineTuningJob, json=body, retry=False)


def job_list(limit: int, after: str | None) -> Call[FineTuningJobList]:
    return Call("GET", JOBS, FineTuningJobList, params=_params(limit=limit, after=after))


def job_get(job_id: str) -> Call[FineTuningJob]:
    return Call("GET", f"{JOBS}/{job_id}", FineTuningJob)


def job_cancel(job_id: str) -> Call[FineTuningJob]:
    return Call("POST", f"{JOBS}/{job_id}/cancel", FineTuningJob)


def job_events(job_id: str, limit: int, after: str | None) -> Call[FineTuningJobEventList]:
    return Call("GET", f"{JOBS}/{job_id}/events", FineTuningJobEventList,
                params=_params(limit=limit, after=after))


def job_checkpoints(job_id: str) -> Call[FineTuningJobCheckpointList]:
    return Call("GET", f"{JOBS}/{job_id}/checkpoints", FineTuningJobCheckpointList)
