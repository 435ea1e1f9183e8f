"""The OpenAPI 3.2 document, generated from the msgspec types that validate requests.

msgspec emits JSON Schema 2020-12, which is OpenAPI 3.1 and 3.2's schema dialect, so
the components below are exactly what the API enforces. ``OPERATIONS`` lists
every route; a test checks that it matches the routes the app serves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import msgspec
import yaml

from volt.protocol.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionRequest
from volt.protocol.common import ErrorResponse, Model, ModelDeleted, ModelList
from volt.protocol.completions import Completion, CompletionRequest
from volt.protocol.embeddings import EmbeddingList, EmbeddingRequest
from volt.protocol.finetune import (
    CreateFineTuningJobRequest,
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
    Me,
    OAuthError,
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

_ERROR_TEXT = {
    400: "Invalid request (bad JSON or field)",
    401: "Missing or invalid API key or token",
    403: "The credential lacks the scope or role, or the request is outside the org's catalog",
    404: "Unknown (or another organization's) model, resource or route",
    413: "Request body too large",
    429: "A key's limit is spent or too many requests wait; see Retry-After and "
         "x-ratelimit-* headers",
    409: "The resource is not in a state that allows this (e.g. a lease not active yet)",
    501: "Not available yet",
    503: "No healthy pod or free capacity can serve the request now, or the scheduler did "
         "not answer (see Retry-After)",
    504: "The request ran past its deadline",
}


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    operation_id: str
    summary: str
    response: Any = None
    request: Any = None
    stream: Any = None
    errors: tuple[int, ...] = ()
    public: bool = False
    content_type: str = "application/json"
    examples: dict[str, Any] | None = None
    """Named request bodies (``volt-tiny`` is ``volt up``'s model)."""
    query: tuple[tuple[str, str], ...] = ()
    """(name, description) of string query parameters."""
    form: tuple[tuple[str, str, bool], ...] = ()
    """(name, description, required) of an ``application/x-www-form-urlencoded`` body."""
    oauth: bool = False
    """Errors in OAuth's shape (RFC 6749 §5.2), not OpenAI's: for OAuth clients."""
    success: int = 200
    session: bool = False
    """Authenticated by the console session cookie (after OIDC sign-in), not a bearer."""
    body_required: bool = True
    multipart: tuple[tuple[str, str, bool, bool], ...] = ()
    """(name, description, required, is a file) of a ``multipart/form-data`` body."""


OPERATIONS: tuple[Operation, ...] = (
    Operation(
        "post", "/v1/chat/completions", "createChatCompletion", "Create a chat completion",
        request=ChatCompletionRequest, response=ChatCompletion, stream=ChatCompletionChunk,
        errors=(400, 401, 403, 404, 413, 429, 503, 504),
        examples={
            "chat": {"model": "volt-tiny", "max_tokens": 8,
                     "messages": [{"role": "user", "content": "Hello"}]},
            "stream": {"model": "volt-tiny", "max_tokens": 8, "stream": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": "Hello"}]},
        },
    ),
    Operation(
        "post", "/v1/completions", "createCompletion", "Create a text completion",
        request=CompletionRequest, response=Completion, stream=Completion,
        errors=(400, 401, 403, 404, 413, 429, 503, 504),
        examples={
            "text": {"model": "volt-tiny", "max_tokens": 8, "prompt": "Once upon"},
            "stream": {"model": "volt-tiny", "max_tokens": 8, "stream": True, "n": 2,
                       "prompt": "Once upon", "logprobs": 2},
        },
    ),
    Operation(
        "post", "/v1/embeddings", "createEmbedding", "Create embeddings",
        request=EmbeddingRequest, response=EmbeddingList,
        errors=(400, 401, 403, 404, 413, 429, 503, 504),
    ),
    Operation("get", "/v1/models", "listModels", "List available models",
              response=ModelList, errors=(401,)),
    Operation("get", "/v1/models/{model_id}", "retrieveModel", "Get a model",
              response=Model, errors=(401, 404)),
    Operation("delete", "/v1/models/{model_id}", "deleteModel",
              "Delete a fine-tuned model of the org, for good (a job's model takes its "
              "checkpoints along)", response=ModelDeleted, errors=(401, 403, 404, 503)),
    Operation(
        "get", "/v1/usage", "getUsage", "Token usage for the tenant", response=UsageReport,
        errors=(400, 401),
        query=(
            ("start", "Unix seconds or a UTC date (YYYY-MM-DD); default: 30 days before end"),
            ("end", "Unix seconds or a UTC date, exclusive; default: now"),
            ("group_by", "Comma-separated: model, day, metro, tier, key"),
        ),
    ),
    Operation("post", "/v1/files", "createFile",
              "Upload a training file (JSONL, chat format), stored sealed in one metro",
              response=FileObject, errors=(400, 401, 403, 413, 503),
              multipart=(("file", "the JSONL file", True, True),
                         ("purpose", "`fine-tune`", True, False),
                         ("metro", "Volt: where to store it (default: the org's only "
                                   "metro)", False, False))),
    Operation("get", "/v1/files", "listFiles", "List the org's files (newest first)",
              response=FileList, errors=(400, 401),
              query=(("purpose", "only `fine-tune` files exist"),
                     ("limit", "1 to 100, default 20"),
                     ("after", "the last id of the previous page"), ("order", "`desc`"))),
    Operation("get", "/v1/files/{file_id}", "retrieveFile", "Get a file",
              response=FileObject, errors=(401, 404)),
    Operation("get", "/v1/files/{file_id}/content", "downloadFile", "A file's content",
              content_type="application/octet-stream", errors=(401, 403, 404)),
    Operation("delete", "/v1/files/{file_id}", "deleteFile",
              "Delete a file (its stored bytes are purged)", response=FileDeleted,
              errors=(401, 404, 409)),
    *(
        op
        for base, suffix in (("/v1/fine_tuning/jobs", ""), ("/v1/fine-tuning/jobs", "Volt"))
        for op in (
            Operation("post", base, f"createFineTuningJob{suffix}",
                      "Create a LoRA fine-tuning job", request=CreateFineTuningJobRequest,
                      response=FineTuningJob, errors=(400, 401, 403, 404, 503),
                      examples={"job": {"model": "volt-tiny", "training_file": "file-abc",
                                        "hyperparameters": {"n_epochs": 3}}}),
            Operation("get", base, f"listFineTuningJobs{suffix}",
                      "List the org's fine-tuning jobs (newest first)",
                      response=FineTuningJobList, errors=(400, 401),
                      query=(("limit", "1 to 100, default 20"),
                             ("after", "the last id of the previous page"),
                             ("metadata", "not supported for filtering yet"))),
            Operation("get", base + "/{job_id}", f"retrieveFineTuningJob{suffix}",
                      "Get a fine-tuning job", response=FineTuningJob, errors=(401, 404)),
            Operation("post", base + "/{job_id}/cancel", f"cancelFineTuningJob{suffix}",
                      "Cancel a fine-tuning job (it stops within a training step)",
                      response=FineTuningJob, errors=(401, 404, 409, 503)),
            Operation("get", base + "/{job_id}/events", f"listFineTuningEvents{suffix}",
                      "A job's events, newest first", response=FineTuningJobEventList,
                      errors=(400, 401, 404),
                      query=(("limit", "1 to 100, default 20"),
                             ("after", "the last event id of the previous page"))),
            Operation("get", base + "/{job_id}/checkpoints",
                      f"listFineTuningJobCheckpoints{suffix}",
                      "A job's kept checkpoints (its last epochs'), newest first",
                      response=FineTuningJobCheckpointList, errors=(400, 401, 404),
                      query=(("limit", "1 to 100, default 20"),
                             ("after", "the last checkpoint id of the previous page"))),
        )
    ),
    Operation("get", "/v1/forge/availability", "getForgeAvailability",
              "GPUs per metro, tier and model: total, free, the largest lease placeable now, "
              "and the price", response=Availability, errors=(400, 401, 403, 503),
              query=(("metro", "only this metro"), ("tier", "only this tier"),
                     ("gpu_model", "only this GPU model (e.g. H100)"))),
    Operation("post", "/v1/forge/leases", "createForgeLease",
              "Lease GPUs: all or nothing, placed by metro, tier and topology, scoped into "
              "a namespace of their own", request=CreateLeaseRequest, response=Lease,
              success=201, errors=(400, 401, 403, 503),
              examples={"one node": {"gpu_model": "H100", "gpu_count": 8, "metro": "fra",
                                     "duration_s": 86400}}),
    Operation("get", "/v1/forge/leases", "listForgeLeases", "List the org's leases (newest first)",
              response=LeaseList, errors=(400, 401, 403),
              query=(("limit", "1 to 100, default 20"),
                     ("after", "the last id of the previous page"),
                     ("state", "only leases in this state"))),
    Operation("get", "/v1/forge/leases/{lease_id}", "getForgeLease", "Get a lease",
              response=Lease, errors=(401, 403, 404)),
    Operation("delete", "/v1/forge/leases/{lease_id}", "terminateForgeLease",
              "Terminate a lease: its pods stop, its namespace and kubeconfigs go, its GPUs "
              "return", response=Lease, errors=(401, 403, 404, 503)),
    Operation("post", "/v1/forge/leases/{lease_id}/kubeconfig", "mintForgeKubeconfig",
              "Mint a kubeconfig for the lease's namespace (a bound token, shown once)",
              request=MintKubeconfigRequest, body_required=False, response=Kubeconfig,
              success=201, errors=(400, 401, 403, 404, 409, 503)),
    Operation("delete", "/v1/forge/leases/{lease_id}/kubeconfigs/{kubeconfig_id}",
              "revokeForgeKubeconfig", "Revoke one minted kubeconfig", response=Lease,
              errors=(401, 403, 404, 503)),
    Operation("post", "/v1/vault/racks", "reserveVaultRack",
              "Reserve a whole bare-metal rack for the org: provisioned with Talos through "
              "its BMCs, then attested", request=ReserveRackRequest, response=Rack,
              success=201, errors=(400, 401, 403, 503),
              examples={"one rack": {"metro": "fra", "gpu_model": "H100", "nodes": 4}}),
    Operation("get", "/v1/vault/racks", "listVaultRacks",
              "List the org's racks (newest first), with each node's progress",
              response=RackList, errors=(400, 401, 403),
              query=(("limit", "1 to 100, default 20"),
                     ("after", "the last id of the previous page"),
                     ("state", "only racks in this state"))),
    Operation("get", "/v1/vault/racks/{rack_id}", "getVaultRack",
              "Get a rack: its state, and per node the step under way and the last error",
              response=Rack, errors=(400, 401, 403, 404)),
    Operation("delete", "/v1/vault/racks/{rack_id}", "releaseVaultRack",
              "Release a rack: every node is cleaned (per the rack's cleaning policy) "
              "before anyone else can have it", response=Rack, errors=(401, 403, 404, 503)),
    Operation("post", "/v1/vault/racks/{rack_id}/redfish-credentials",
              "mintVaultRedfishCredential",
              "Mint a username and password for Volt's Redfish proxy, scoped to the rack's "
              "systems (the password is shown once)", request=MintRedfishCredentialRequest,
              body_required=False, response=RedfishCredential, success=201,
              errors=(400, 401, 403, 404, 409, 503)),
    Operation("delete", "/v1/vault/racks/{rack_id}/redfish-credentials/{credential_id}",
              "revokeVaultRedfishCredential", "Revoke a Redfish proxy credential (its "
              "sessions end with it)", response=Rack, errors=(401, 403, 404, 503)),
    Operation("get", "/v1/vault/racks/{rack_id}/attestation", "getVaultAttestation",
              "The rack's measured-boot report, per node, signed by the verifier's key",
              response=AttestationReport, errors=(400, 401, 403, 404, 503)),
    Operation("get", "/v1/vault/racks/{rack_id}/talos-config", "getVaultTalosConfig",
              "The rack's Talos machine configs (one per node), talosconfig and secrets "
              "bundle; `format=yaml` (with `node`) or `tar` for files",
              response=TalosConfig, errors=(400, 401, 403, 404, 409, 503),
              query=(("node", "only this node's configuration"),
                     ("format", "json (default), yaml (one node) or tar"))),
    Operation("get", "/.well-known/volt/verifier-keys", "getVerifierKeys",
              "The verifier's public keys (JWKS): check attestation reports offline",
              response=Jwks, public=True, errors=(503,)),
    Operation("get", "/v1/me", "getMe", "Who the caller is (SPIFFE ID, org, role, scopes)",
              response=Me, errors=(401, 403)),
    Operation("get", "/v1/orgs/{org_id}/api-keys", "listApiKeys",
              "List the org's API keys (newest first; secrets never shown)",
              response=ApiKeyList, errors=(400, 401, 403, 404),
              query=(("limit", "1 to 100, default 20"),
                     ("after", "the last id of the previous page"))),
    Operation("post", "/v1/orgs/{org_id}/api-keys", "createApiKey",
              "Create an API key (its secret is in this response only)",
              request=CreateApiKeyRequest, response=CreatedApiKey, success=201,
              errors=(400, 401, 403, 404)),
    Operation("get", "/v1/orgs/{org_id}/api-keys/{key_id}", "getApiKey", "Get an API key",
              response=ApiKey, errors=(401, 403, 404)),
    Operation("delete", "/v1/orgs/{org_id}/api-keys/{key_id}", "revokeApiKey",
              "Revoke an API key (every API replica refuses it within a second)",
              response=ApiKey, errors=(401, 403, 404)),
    Operation("get", "/v1/orgs/{org_id}/audit-events", "listAuditEvents",
              "The org's audit events in log order, each with its inclusion proof",
              response=AuditEventList, errors=(400, 401, 403, 404),
              query=(("limit", "1 to 100, default 20"),
                     ("after", "`last_seq` of the previous page"),
                     ("tree_size", "the checkpoint to prove against (default: the latest)"),
                     ("since", "Unix ms, inclusive"), ("until", "Unix ms, exclusive"),
                     ("method", "e.g. DELETE"), ("route", "a route template"),
                     ("status", "an HTTP status"), ("request_id", "an x-request-id"),
                     ("auth_id", "a key id, OAuth client id or user id"))),
    Operation("get", "/v1/audit/checkpoint", "getAuditCheckpoint",
              "The audit log's latest signed checkpoint", response=Checkpoint,
              errors=(401, 403, 404)),
    Operation("get", "/v1/audit/consistency", "getAuditConsistencyProof",
              "A proof that the log of `second` events extends the one of `first`",
              response=ConsistencyProof, errors=(400, 401, 403),
              query=(("first", "the earlier tree size"), ("second", "the later tree size"))),
    Operation("post", "/oauth/device/code", "deviceAuthorization",
              "Start the OAuth device flow (RFC 8628)", response=DeviceAuthorization,
              public=True, oauth=True, errors=(400, 401),
              form=(("client_id", "a registered public client (volt-cli)", True),
                    ("scope", "`read`, `write` or both (space-separated)", False))),
    Operation("post", "/oauth/token", "token",
              "Redeem an approved device code, or rotate a refresh token",
              response=TokenResponse, public=True, oauth=True, errors=(400, 401),
              form=(("grant_type", "urn:ietf:params:oauth:grant-type:device_code or "
                                   "refresh_token", True),
                    ("client_id", "the client that started the flow", True),
                    ("device_code", "for the device-code grant", False),
                    ("refresh_token", "for the refresh_token grant", False))),
    Operation("get", "/console/login", "consoleLogin",
              "Start OIDC sign-in (redirects to the issuer)", public=True,
              content_type="text/html", errors=(404,),
              query=(("issuer", "a configured issuer's name"),
                     ("return_to", "a path on this site to go to afterwards"))),
    Operation("get", "/console/callback", "consoleCallback",
              "The issuer's redirect back: starts a console session", public=True,
              content_type="text/html", errors=(400,),
              query=(("code", ""), ("state", ""), ("iss", "RFC 9207"))),
    Operation("get", "/console", "console", "The console: your orgs and their keys",
              session=True, content_type="text/html"),
    Operation("post", "/console/logout", "consoleLogout", "End the console session",
              session=True, content_type="text/html", errors=(403,),
              form=(("csrf_token", "the session's CSRF token", True),)),
    Operation("post", "/console/orgs/{org_id}/api-keys", "consoleCreateApiKey",
              "Create an API key from the console", session=True, content_type="text/html",
              success=201, errors=(400, 403, 404),
              form=(("csrf_token", "the session's CSRF token", True),
                    ("name", "the key's name", True))),
    Operation("post", "/console/orgs/{org_id}/api-keys/{key_id}/revoke",
              "consoleRevokeApiKey", "Revoke an API key from the console", session=True,
              content_type="text/html", errors=(403, 404),
              form=(("csrf_token", "the session's CSRF token", True),)),
    Operation("get", "/device", "devicePage", "Enter a device's user code (console session)",
              session=True, content_type="text/html", query=(("user_code", ""),)),
    Operation("post", "/device", "deviceDecision", "Approve or deny a device sign-in",
              session=True, content_type="text/html", errors=(400, 403, 404, 429),
              form=(("csrf_token", "the session's CSRF token", True),
                    ("user_code", "the code the device shows", True),
                    ("org_id", "the org the device acts in (to approve)", False),
                    ("action", "approve or deny", True))),
    Operation("get", "/healthz", "healthz", "Liveness", public=True, content_type="text/plain"),
    Operation("get", "/readyz", "readyz", "Readiness: connected and routing", public=True,
              errors=(503,), content_type="text/plain"),
    Operation("get", "/openapi.yaml", "openapi", "This document", public=True,
              content_type="application/yaml"),
    Operation("get", "/metrics", "metrics", "Prometheus metrics", public=True,
              content_type="text/plain"),
)


def build_document(version: str) -> dict[str, Any]:
    types = [ErrorResponse, OAuthError] + [
        t for op in OPERATIONS for t in (op.request, op.response, op.stream) if t is not None
    ]
    _, components = msgspec.json.schema_components(
        types, ref_template="#/components/schemas/{name}"
    )

    def ref(t: Any) -> dict[str, str]:
        return {"$ref": f"#/components/schemas/{t.__name__}"}

    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        ok: dict[str, Any] = {"description": "OK"}
        if op.response is not None:
            ok["content"] = {"application/json": {"schema": ref(op.response)}}
            if op.stream is not None:
                # OpenAPI 3.2's way to describe a stream: the schema of one event.
                ok["content"]["text/event-stream"] = {
                    "description": (
                        "With `stream: true`: server-sent events, each "
                        f"`data: <{op.stream.__name__}>`, ending with `data: [DONE]`."
                    ),
                    "itemSchema": {
                        "type": "object",
                        "required": ["data"],
                        "properties": {"data": {"oneOf": [
                            {"const": "[DONE]"},
                            {"type": "string", "contentMediaType": "application/json",
                             "contentSchema": ref(op.stream)},
                        ]}},
                    },
                }
        elif op.content_type == "application/yaml":  # this document: an object in YAML
            ok["content"] = {op.content_type: {"schema": {"type": "object",
                                                          "required": ["openapi", "paths"]}}}
        else:
            ok["content"] = {op.content_type: {"schema": {"type": "string"}}}
        responses: dict[str, Any] = {str(op.success): ok}
        if op.content_type == "text/html":
            responses["302"] = {"description": "Not signed in, or done: go where Location says"}
        for status in op.errors:
            responses[str(status)] = {
                "description": _ERROR_TEXT[status],
                "content": {"application/json": {
                    "schema": ref(OAuthError if op.oauth else ErrorResponse)}},
            }
        operation: dict[str, Any] = {
            "operationId": op.operation_id, "summary": op.summary, "responses": responses,
        }
        if op.public:
            operation["security"] = []
        elif op.session:
            operation["security"] = [{"consoleSession": []}]
        if op.request is not None:
            body: dict[str, Any] = {"schema": ref(op.request)}
            if op.examples:
                body["examples"] = {name: {"value": value} for name, value in op.examples.items()}
            operation["requestBody"] = {"required": op.body_required,
                                        "content": {"application/json": body}}
        if op.multipart:
            operation["requestBody"] = {"required": True, "content": {
                "multipart/form-data": {"schema": {
                    "type": "object",
                    "properties": {name: ({"type": "string", "contentMediaType":
                                           "application/octet-stream", "description": text}
                                          if is_file else {"type": "string",
                                                           "description": text})
                                   for name, text, _, is_file in op.multipart},
                    "required": [name for name, _, required, _ in op.multipart if required],
                }}}}
        if op.form:
            operation["requestBody"] = {"required": True, "content": {
                "application/x-www-form-urlencoded": {"schema": {
                    "type": "object",
                    "properties": {name: {"type": "string", "description": text}
                                   for name, text, _ in op.form},
                    "required": [name for name, _, required in op.form if required],
                }}}}
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in re.findall(r"{(\w+)}", op.path)
        ]
        parameters += [
            {"name": name, "in": "query", "required": False, "description": text,
             "schema": {"type": "string"}}
            for name, text in op.query
        ]
        if parameters:
            operation["parameters"] = parameters
        paths.setdefault(op.path, {})[op.method] = operation
    return {
        "openapi": "3.2.0",
        "info": {
            "title": "Volt Control Plane API",
            "version": version,
            "description": "Spark (OpenAI-compatible tokens), Forge and Vault.",
        },
        "servers": [{"url": "/"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearerAuth": {"type": "http", "scheme": "bearer",
                               "description": "An API key (volt_sk_live_..., volt_sk_test_...) "
                                              "or an OAuth access token from `volt login`"},
                "consoleSession": {"type": "apiKey", "in": "cookie", "name": "volt_session",
                                   "description": "Set by /console/callback after OIDC sign-in"},
            },
        },
    }


def render_yaml(version: str) -> str:
    text: str = yaml.safe_dump(build_document(version), sort_keys=False, allow_unicode=True)
    return text
