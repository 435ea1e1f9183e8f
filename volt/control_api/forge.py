"""The Forge routes: GPU availability, leases, kubeconfigs.

Every change is a command to the scheduler (the single writer of leases) over
``volt.sched.forge``; reads come from the store, where the scheduler keeps
every lease. Authentication and the route's rule ran before these
(``app.identify``); another org's lease answers 404, because the store
lookup and the scheduler both only find the caller's own.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import msgspec
import yaml
from quart import Quart, Response, g, request

from volt.control_api.errors import InvalidRequest, NotFound, PermissionDenied
from volt.control_api.resource_pages import org_page
from volt.control_api.scheduler_commands import SchedulerCommands, json_response, known_query
from volt.control_api.serving import decode_request
from volt.control_api.usage import gpu_seconds
from volt.identity import Principal
from volt.protocol.forge import (
    Availability,
    CreateLeaseRequest,
    GpuOffer,
    Kubeconfig,
    KubeconfigInfo,
    LargestLease,
    Lease,
    LeaseList,
    LeaseNode,
    MintKubeconfigRequest,
)
from volt.store.database import Database
from volt.store.resources import ResourceRecord, ResourceStore
from volt.wire import (
    FORGE,
    AvailabilityAnswer,
    AvailabilityQuery,
    ForgeRefused,
    KubeconfigMint,
    KubeconfigMinted,
    KubeconfigRevoke,
    LeaseCreate,
    LeaseTerminate,
    subjects,
)

KIND = "lease"
_create = msgspec.json.Decoder(CreateLeaseRequest)
_mint = msgspec.json.Decoder(MintKubeconfigRequest)
STATES = ("pending", "provisioning", "active", "expiring", "terminated", "failed")


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def lease_object(record: ResourceRecord, now: float | None = None) -> Lease:
    spec, status = record.spec, record.status
    return Lease(
        id=record.id, state=record.state, reason=record.reason,  # type: ignore[arg-type]
        gpu_model=spec["gpu_model"], gpu_count=int(spec["gpu_count"]), metro=spec["metro"],
        tier=spec["tier"], created_at=int(record.created_at), starts_at=int(spec["starts_at"]),
        ends_at=int(spec["ends_at"]), active_at=_int(status.get("active_at")),
        ended_at=_int(status.get("ended_at")), namespace=status.get("namespace", ""),
        nodes=[LeaseNode(node_id=node, gpus=int(gpus))
               for node, gpus in status.get("placement") or []],
        placement_scope=status.get("scope"), egress_cidrs=list(spec.get("egress_cidrs") or []),
        kubeconfigs=[KubeconfigInfo(id=e["id"], created_at=int(e["created_at"]),
                                    expires_at=int(e["expires_at"]),
                                    revoked_at=_int(e["revoked_at"]))
                     for e in status.get("kubeconfigs", [])],
        gpu_seconds=gpu_seconds(record, 0.0, float("inf"), time.time() if now is None else now),
    )


def kubeconfig_yaml(minted: KubeconfigMinted) -> str:
    """A kubeconfig for the minted token, its context in the lease's namespace."""
    name = f"volt-{minted.lease_id}"
    document = {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": name, "cluster": {
            "server": minted.server,
            "certificate-authority-data": base64.b64encode(minted.ca_pem.encode()).decode()}}],
        "users": [{"name": name, "user": {"token": minted.token}}],
        "contexts": [{"name": name, "context": {
            "cluster": name, "user": name, "namespace": minted.namespace}}],
        "current-context": name,
    }
    return yaml.safe_dump(document, sort_keys=False)


def register_forge_routes(app: Quart, services: Any) -> None:
    def commands() -> SchedulerCommands:
        assert services.nc is not None
        return SchedulerCommands(services.nc, subjects.SCHED_FORGE, FORGE, ForgeRefused,
                                 "lease")

    def leases() -> ResourceStore:
        db: Database = services.db
        return ResourceStore(db)

    async def own_lease(principal: Principal, lease_id: str) -> ResourceRecord:
        record = await leases().get(KIND, lease_id, org_id=principal.org_id)
        if record is None:
            raise NotFound(f"No lease {lease_id}.", param="lease_id", code="lease_not_found")
        return record

    @app.get("/v1/forge/availability")
    async def availability() -> Response:
        args = request.args
        known_query(args, ("metro", "tier", "gpu_model"))
        answer = await commands().ask(AvailabilityQuery(
            metro=args.get("metro") or None, tier=args.get("tier") or None,
            gpu_model=args.get("gpu_model") or None))
        assert isinstance(answer, AvailabilityAnswer)
        return json_response(Availability(data=[GpuOffer(
            metro=row.metro, tier=row.tier, gpu_model=row.gpu_model, total=row.total,
            free=row.free, price_per_gpu_hour=row.price_per_gpu_hour,
            largest_lease=LargestLease(on_node=row.largest_on_node,
                                       in_nvlink_domain=row.largest_in_nvlink_domain,
                                       in_rack=row.largest_in_rack))
            for row in answer.rows]))

    @app.post("/v1/forge/leases")
    async def create_lease() -> Response:
        principal: Principal = g.principal
        if principal.mode == "test":
            raise PermissionDenied("Test keys cannot lease GPUs: use a live key.",
                                   code="test_key_not_allowed")
        body: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
        req = decode_request(_create, body)
        now = time.time()
        starts = float(req.starts_at) if req.starts_at is not None else now
        if (req.duration_s is None) == (req.ends_at is None):
            raise InvalidRequest("Give exactly one of `duration_s` and `ends_at`.",
                                 param="duration_s")
        ends = float(req.ends_at) if req.ends_at is not None else starts + (req.duration_s or 0)
        answer = await commands().ask(LeaseCreate(
            org_id=principal.org_id, created_by=principal.credential_id,
            gpu_model=req.gpu_model, gpu_count=req.gpu_count, metro=req.metro, tier=req.tier,
            starts_at=float(req.starts_at) if req.starts_at is not None else None,
            ends_at=ends, egress_cidrs=req.egress_cidrs))
        record = await own_lease(principal, getattr(answer, "lease_id", ""))
        return json_response(lease_object(record), status=201)

    @app.get("/v1/forge/leases")
    async def list_leases() -> Response:
        principal: Principal = g.principal
        page = await org_page(leases(), KIND, principal, request.args, states=STATES,
                              noun="lease")
        data = [lease_object(record) for record in page.records]
        return json_response(LeaseList(data=data, has_more=page.has_more,
                               first_id=data[0].id if data else None,
                               last_id=data[-1].id if data else None))

    @app.get("/v1/forge/leases/<lease_id>")
    async def get_lease(lease_id: str) -> Response:
        return json_response(lease_object(await own_lease(g.principal, lease_id)))

    @app.delete("/v1/forge/leases/<lease_id>")
    async def terminate_lease(lease_id: str) -> Response:
        principal: Principal = g.principal
        await own_lease(principal, lease_id)  # another org's: 404 before anything is asked
        await commands().ask(LeaseTerminate(org_id=principal.org_id, lease_id=lease_id))
        return json_response(lease_object(await own_lease(principal, lease_id)))

    @app.post("/v1/forge/leases/<lease_id>/kubeconfig")
    async def mint_kubeconfig(lease_id: str) -> Response:
        principal: Principal = g.principal
        await own_lease(principal, lease_id)
        body: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
        req = decode_request(_mint, body) if body.strip() else MintKubeconfigRequest()
        answer = await commands().ask(KubeconfigMint(org_id=principal.org_id,
                                                     lease_id=lease_id, ttl_s=req.ttl_s))
        assert isinstance(answer, KubeconfigMinted)
        return json_response(Kubeconfig(id=answer.kubeconfig_id, lease_id=lease_id,
                                namespace=answer.namespace, expires_at=int(answer.expires_at),
                                kubeconfig=kubeconfig_yaml(answer)), status=201)

    @app.delete("/v1/forge/leases/<lease_id>/kubeconfigs/<kubeconfig_id>")
    async def revoke_kubeconfig(lease_id: str, kubeconfig_id: str) -> Response:
        principal: Principal = g.principal
        await own_lease(principal, lease_id)
        await commands().ask(KubeconfigRevoke(org_id=principal.org_id, lease_id=lease_id,
                                              kubeconfig_id=kubeconfig_id))
        return json_response(lease_object(await own_lease(principal, lease_id)))
