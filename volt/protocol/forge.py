"""Request and response types of the Forge routes: availability, leases,
kubeconfigs. The API validates with them, ``/openapi.yaml`` is generated from
them, and the SDK decodes with them. Times are Unix seconds."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

Token = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
LeaseStateName = Literal["pending", "provisioning", "active", "expiring", "terminated",
                         "failed"]


class CreateLeaseRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    gpu_model: Token
    """As ``/v1/forge/availability`` names it (``H100``)."""
    gpu_count: Annotated[int, msgspec.Meta(ge=1, le=4096)]
    metro: Token
    tier: Token | None = None
    """Absent: any tier."""
    duration_s: Annotated[int, msgspec.Meta(ge=1)] | None = None
    """How long from its start; give this or ``ends_at``."""
    ends_at: Annotated[int, msgspec.Meta(gt=0)] | None = None
    starts_at: Annotated[int, msgspec.Meta(gt=0)] | None = None
    """Absent: now. A later start holds no GPUs until then (and fails if none
    are free at that time)."""
    egress_cidrs: Annotated[list[Annotated[str, msgspec.Meta(max_length=64)]],
                            msgspec.Meta(max_length=32)] = []
    """Where the lease's pods may connect out; absent: nowhere (zero egress)."""


class LeaseNode(msgspec.Struct, kw_only=True):
    node_id: str
    gpus: int


class KubeconfigInfo(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    expires_at: int
    revoked_at: int | None = None


class Lease(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["forge.lease"] = "forge.lease"
    state: LeaseStateName
    reason: str = ""
    """Why it is in its state, when that is not plain (failed, terminated)."""
    gpu_model: str
    gpu_count: int
    metro: str
    tier: str | None
    created_at: int
    starts_at: int
    ends_at: int
    active_at: int | None = None
    ended_at: int | None = None
    namespace: str
    """Its Kubernetes namespace (``volt forge kubeconfig`` sets it as the context's)."""
    nodes: list[LeaseNode] = []
    placement_scope: Literal["node", "nvlink_domain", "rack"] | None = None
    egress_cidrs: list[str] = []
    kubeconfigs: list[KubeconfigInfo] = []
    gpu_seconds: int = 0
    """Billed so far: GPUs times seconds active."""


class LeaseList(msgspec.Struct, kw_only=True):
    data: list[Lease]
    first_id: str | None
    last_id: str | None
    has_more: bool
    object: Literal["list"] = "list"


class MintKubeconfigRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    ttl_s: Annotated[int, msgspec.Meta(ge=600, le=7 * 86400)] | None = None
    """Default ``forge.kubeconfig_ttl_s`` (an hour); never past the lease's end."""


class Kubeconfig(msgspec.Struct, kw_only=True):
    id: str
    object: Literal["forge.kubeconfig"] = "forge.kubeconfig"
    lease_id: str
    namespace: str
    expires_at: int
    kubeconfig: str
    """The kubeconfig file (YAML), shown once: it holds a bearer token."""


class LargestLease(msgspec.Struct, kw_only=True):
    on_node: int
    in_nvlink_domain: int
    in_rack: int


class GpuOffer(msgspec.Struct, kw_only=True):
    metro: str
    tier: str
    gpu_model: str
    total: int
    free: int
    largest_lease: LargestLease
    """The largest lease placeable now, by what holds it (one node, whole
    nodes of one NVLink domain, whole nodes of one rack)."""
    price_per_gpu_hour: float | None = None


class Availability(msgspec.Struct, kw_only=True):
    data: list[GpuOffer]
    object: Literal["list"] = "list"
