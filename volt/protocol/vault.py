"""Request and response types of the Vault routes: racks and their attestation
report. The API validates with them, ``/openapi.yaml`` is generated from them,
and the SDK decodes with them. Times are Unix seconds.

Nothing here carries a BMC's address or credential: tenants reach their
nodes' BMCs only through Volt's Redfish proxy."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
RackStateName = Literal["available", "reserved", "provisioning", "attesting", "ready",
                        "releasing", "cleaning", "failed", "maintenance"]
NodeStateName = Literal["pending", "provisioning", "booted", "cleaning", "cleaned", "failed"]


class ReserveRackRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    metro: Token
    tier: Token | None = None
    """Absent: any tier."""
    gpu_model: Token | None = None
    """Absent: any GPU model (``H100``)."""
    nodes: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    """At least this many nodes; absent: any rack. The smallest rack that fits is taken."""
    talos_version: Annotated[str, msgspec.Meta(pattern=r"^v\d+\.\d+\.\d+$")] | None = None
    """Absent: the newest Talos this Volt offers."""


class CleaningStep(msgspec.Struct, kw_only=True):
    step: str
    outcome: str
    """``done``, ``not supported: …`` or ``failed: …``."""


class RackNode(msgspec.Struct, kw_only=True):
    name: str
    """The node's hostname (and its identity in attestation)."""
    gpu_model: str
    gpus: int
    state: NodeStateName
    step: str = ""
    """The last step done (``power_off``, ``boot_override``, ``power_on``,
    ``clean``); ``running``: the one under way."""
    running: str = ""
    attempts: int = 0
    """Failed attempts so far (each step is tried ``vault.node_attempts`` times)."""
    last_error: str = ""
    boot: Literal["virtual_media", "pxe"] | None = None
    booted_at: int | None = None
    cleaning: list[CleaningStep] = []


class RedfishCredentialInfo(msgspec.Struct, kw_only=True):
    id: str
    username: str
    created_at: int
    expires_at: int
    revoked_at: int | None = None


class Rack(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["vault.rack"] = "vault.rack"
    state: RackStateName
    reason: str = ""
    """Why it is in its state (failed, maintenance: which node and what went wrong)."""
    metro: str
    tier: str
    gpu_model: str
    gpu_count: int
    cleaning_policy: Literal["metadata", "erase"]
    """What release does to the disks before anyone else gets the rack."""
    talos_version: str | None = None
    reserved_at: int | None = None
    ready_at: int | None = None
    released_at: int | None = None
    nodes: list[RackNode] = []
    redfish_credentials: list[RedfishCredentialInfo] = []
    """Credentials minted for the Redfish proxy (their passwords are never shown again)."""


class RackList(msgspec.Struct, kw_only=True):
    data: list[Rack]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class NodeAttestation(msgspec.Struct, kw_only=True):
    node: str
    state: Literal["passed", "failed", "expired", "not_attested"]
    verdict: dict[str, Any] | None = None
    """The verifier's signed verdict (``verdict``: PCRs, policy, matched versions,
    nonce, quote time, findings; ``signature``: Ed25519 by ``key_id``)."""


class AttestationReport(msgspec.Struct, kw_only=True):
    object: Literal["vault.attestation_report"] = "vault.attestation_report"
    rack_id: str
    state: RackStateName
    generated_at: int
    all_passed: bool
    nodes: list[NodeAttestation]
    jws: str
    """The same report, signed (compact JWS, Ed25519) by the verifier's key; check it
    offline against ``/.well-known/volt/verifier-keys``."""


class Jwks(msgspec.Struct, kw_only=True):
    keys: list[dict[str, Any]]


class TalosNodeConfig(msgspec.Struct, kw_only=True):
    node: str
    role: Literal["controlplane", "worker"]
    config: str
    """The node's machine configuration (YAML, several documents):
    ``talosctl apply-config --insecure -n <node> -f <file>`` while it waits in
    Talos's maintenance mode."""


class TalosConfig(msgspec.Struct, kw_only=True):
    object: Literal["vault.talos_config"] = "vault.talos_config"
    rack_id: str
    talos_version: str
    kubernetes_version: str
    cluster_name: str
    endpoint: str
    nodes: list[TalosNodeConfig]
    talosconfig: str
    """A talosctl client configuration (``os:admin``) for the rack's nodes."""
    secrets: str
    """The secrets bundle (``talosctl gen secrets``'s shape): the cluster's PKI.
    Keep it safe: it is the only other copy."""


class MintRedfishCredentialRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ttl_s: Annotated[int, msgspec.Meta(ge=60, le=7 * 86400)] | None = None
    """Default ``vault.redfish_credential_ttl_s`` (8 hours); never past the
    rack's release, which revokes every credential."""


class RedfishCredential(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["vault.redfish_credential"] = "vault.redfish_credential"
    rack_id: str
    endpoint: str
    """Volt's Redfish proxy (its service root is ``<endpoint>/redfish/v1/``)."""
    username: str
    password: str
    """Shown once: Volt keeps only a keyed hash of it."""
    expires_at: int
