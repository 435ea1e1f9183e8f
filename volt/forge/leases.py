"""The scheduler's Forge: the single writer of leases.

Commands (create, terminate, mint and revoke kubeconfigs) are applied one at
a time under one lock: a placement is decided and its GPUs taken in the same
critical section as the lease is stored, so two leases never share a GPU, and
an org's quota is checked against every lease it holds, including the one
being made. The slow work — draining Spark off the chosen nodes, making the
namespace, deleting it — runs in the reconcile loop, one task per lease, and
every step is idempotent, so a scheduler that restarts (``load``) simply
resumes the leases it finds in PROVISIONING or EXPIRING.

Time is an injected clock (wall seconds): tests move it to expire leases
without sleeping.
"""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from volt.config import ForgeSettings
from volt.forge.kube import LeaseScope, MintedToken, namespace_for
from volt.forge.states import HOLDS_GPUS, LEASES, LIVE, RESUME, LeaseEvent, LeaseState
from volt.lifecycle import Refusal, reconcile_forever
from volt.placement.gpus import (
    GpuNode,
    GpuPlacement,
    GpuPool,
    GpuRequest,
    Unplaceable,
)
from volt.store.resources import ResourceRecord, ResourceStore
from volt.wire import AvailabilityQuery, GpuAvailability, LeaseCreate

log = logging.getLogger(__name__)
KIND = "lease"
_CIDR = re.compile(r"^[0-9a-fA-F:.]+/\d{1,3}$")


class ForgeError(Refusal):
    """A Forge command refused."""


def not_found(lease_id: str) -> ForgeError:
    return ForgeError(f"No lease {lease_id}.", code="lease_not_found", status=404,
                      param="lease_id")


class KubeOps(Protocol):
    """What Forge needs of Kubernetes (``KubeScope``; a small fake in unit tests)."""

    server: str
    ca_pem: bytes

    def provision(self, scope: LeaseScope) -> None: ...
    def mint(self, lease_id: str, kubeconfig_id: str, ttl_s: int) -> MintedToken: ...
    def revoke(self, lease_id: str, kubeconfig_id: str) -> None: ...
    def teardown(self, lease_id: str, nodes: list[str]) -> bool: ...


@dataclass(frozen=True, slots=True)
class Minted:
    kubeconfig_id: str
    token: MintedToken
    namespace: str


def placement_of(record: ResourceRecord) -> GpuPlacement:
    nodes = record.status.get("placement") or []
    return GpuPlacement(nodes=tuple((node, int(gpus)) for node, gpus in nodes),
                        scope=record.status.get("scope", "node"))


def gpu_model_id(nvml_name: str) -> str:
    """NVML's product name as a lease names it: ``NVIDIA H100 80GB HBM3`` -> ``H100``."""
    words = nvml_name.removeprefix("NVIDIA").split()
    return words[0] if words else "unknown"


class Forge:
    def __init__(
        self,
        store: ResourceStore,
        pool: GpuPool,
        kube: KubeOps | None,
        settings: ForgeSettings,
        *,
        quota_of: Callable[[str], Awaitable[int | None]],
        spark_inflight: Callable[[str], int] = lambda node_id: 0,
        handed_over: Callable[[str], str | None] = lambda node_id: None,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] = lambda: None,
        on_assign: Callable[[str, str], None] = lambda node_id, lease_id: None,
    ) -> None:
        self.store = store
        self.pool = pool
        self.kube = kube
        self.settings = settings
        self.quota_of = quota_of
        self.spark_inflight = spark_inflight
        self.clock = clock
        self.on_change = on_change
        """Called when the set of leased nodes changes (the scheduler republishes its view)."""
        self.handed_over = handed_over
        """Node id -> the lease its agent says it has handed its GPUs to ("" for
        none; None: not known, e.g. no agent answers for it)."""
        self.on_assign = on_assign
        """Tell a node now what it is assigned to (the scheduler publishes it;
        it also repeats it at every heartbeat that disagrees)."""
        self._assigned: dict[str, str] = {}
        """Node id -> the lease it must hand its GPUs to."""
        self._leases: dict[str, ResourceRecord] = {}
        """Every live lease (not terminated or failed), as last stored."""
        self._lock = asyncio.Lock()
        self._work: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        """Lease id -> when its failed work is tried again (backing off)."""

    # --- state -----------------------------------------------------------------

    async def load(self) -> None:
        """Resume after a (re)start: every live lease, its GPUs taken again."""
        for record in await self.store.in_states(KIND, [s.value for s in LIVE]):
            self._leases[record.id] = record
            if LeaseState(record.state) in HOLDS_GPUS:
                self.pool.allocate(placement_of(record))
                for node, _ in placement_of(record).nodes:
                    self._assigned[node] = record.id
        if self._leases:
            log.info("leases resumed", extra={"leases": len(self._leases)})

    def leased_nodes(self) -> dict[str, str]:
        """Node id -> the lease holding it (those nodes take no Spark request)."""
        return {node: record.id for record in self._leases.values()
                if LeaseState(record.state) in HOLDS_GPUS
                for node, _ in placement_of(record).nodes}

    def assignment(self, node_id: str) -> str:
        """The lease a node must hand its GPUs to ("": it serves Spark)."""
        return self._assigned.get(node_id, "")

    def _assign(self, nodes: list[str], lease_id: str) -> None:
        for node in nodes:
            if lease_id:
                self._assigned[node] = lease_id
            else:
                self._assigned.pop(node, None)
            self.on_assign(node, lease_id)

    def lease(self, lease_id: str) -> ResourceRecord | None:
        return self._leases.get(lease_id)

    def node_seen(self, node_id: str, *, metro: str, tier: str, gpu_names: list[str],
                  rack: str, nvlink_domain: str, schedulable: bool) -> None:
        """A node's latest facts, from the node table."""
        if not gpu_names:
            self.pool.remove(node_id)
            return
        node = GpuNode(node_id=node_id, metro=metro, tier=tier,
                       gpu_model=gpu_model_id(gpu_names[0]), gpus=len(gpu_names),
                       rack=rack, nvlink_domain=nvlink_domain)
        if self.pool.node(node_id) == node:
            self.pool.set_schedulable(node_id, schedulable)  # every heartbeat: cheap
        else:
            self.pool.set_node(node, schedulable=schedulable)

    def node_gone(self, node_id: str) -> None:
        self.pool.remove(node_id)

    # --- commands ----------------------------------------------------------------

    async def create(self, command: LeaseCreate) -> ResourceRecord:
        now = self.clock()
        starts_at = command.starts_at if command.starts_at is not None else now
        self._check_shape(command, starts_at, now)
        spec: dict[str, Any] = {
            "gpu_model": command.gpu_model, "gpu_count": command.gpu_count,
            "metro": command.metro, "tier": command.tier, "starts_at": starts_at,
            "ends_at": command.ends_at, "egress_cidrs": list(command.egress_cidrs),
            "created_by": command.created_by,
        }
        async with self._lock:
            await self._check_quota(command.org_id, command.gpu_count)
            lease_id = "lease-" + secrets.token_hex(6)
            status: dict[str, Any] = {"namespace": namespace_for(lease_id)}
            starts_now = starts_at <= now
            placement = None
            if starts_now:
                placement = self._place(spec)
                status |= {"placement": [list(n) for n in placement.nodes],
                           "scope": placement.scope, "provisioning_since": now}
                self.pool.allocate(placement)
            try:
                record = await self.store.create(
                    kind=KIND, id=lease_id, org_id=command.org_id,
                    state=(LeaseState.PROVISIONING if starts_now else LeaseState.PENDING).value,
                    spec=spec, status=status, now=now)
            except BaseException:
                if placement is not None:
                    self.pool.release(placement)
                raise
            self._leases[lease_id] = record
        log.info("lease created", extra={"lease_id": lease_id, "state": record.state,
                                         "gpus": command.gpu_count})
        if placement is not None:
            self.on_change()
        self._wake.set()
        return record

    def _check_shape(self, command: LeaseCreate, starts_at: float, now: float) -> None:
        if self.kube is None:
            raise ForgeError("Forge is not enabled on this Volt (no forge.kubeconfig): "
                             "leases cannot be created.", code="forge_disabled", status=503)
        if command.gpu_count < 1:
            raise ForgeError("gpu_count must be at least 1.", code="invalid_gpu_count",
                             status=400, param="gpu_count")
        if starts_at < now - 60:
            raise ForgeError("starts_at is in the past.", code="invalid_start", status=400,
                             param="starts_at")
        length = command.ends_at - starts_at
        if length < self.settings.min_lease_s:
            raise ForgeError(f"A lease lasts at least {self.settings.min_lease_s:.0f} s.",
                             code="invalid_duration", status=400, param="duration_s")
        if length > self.settings.max_lease_s:
            raise ForgeError(f"A lease lasts at most {self.settings.max_lease_s:.0f} s.",
                             code="invalid_duration", status=400, param="duration_s")
        for cidr in command.egress_cidrs:
            if not _CIDR.match(cidr):
                raise ForgeError(f"{cidr!r} is not a CIDR block (like 10.0.0.0/8).",
                                 code="invalid_egress", status=400, param="egress_cidrs")

    async def _check_quota(self, org_id: str, gpus: int) -> None:
        quota = await self.quota_of(org_id)
        if quota is None:
            quota = self.settings.default_gpu_quota
        held = sum(int(r.spec["gpu_count"]) for r in self._leases.values()
                   if r.org_id == org_id)
        if held + gpus > quota:
            raise ForgeError(
                f"This lease would bring your organization to {held + gpus} GPUs; its quota "
                f"is {quota} ({held} held by live leases).", code="gpu_quota_exceeded",
                status=403, param="gpu_count")

    def _place(self, spec: dict[str, Any]) -> GpuPlacement:
        try:
            return self.pool.place(GpuRequest(gpu_model=spec["gpu_model"],
                                              count=int(spec["gpu_count"]),
                                              metro=spec["metro"], tier=spec["tier"]))
        except Unplaceable as exc:
            if exc.code == "invalid_shape":
                raise ForgeError(f"{exc}.", code="invalid_shape", status=400,
                                 param="gpu_count") from exc
            raise ForgeError(f"Not enough capacity: {exc}. See /v1/forge/availability.",
                             code="insufficient_capacity", status=503) from exc

    async def terminate(self, org_id: str, lease_id: str) -> ResourceRecord:
        async with self._lock:
            record = self._owned(org_id, lease_id)
            if record is None:
                stored = await self.store.get(KIND, lease_id, org_id=org_id)
                if stored is None:
                    raise not_found(lease_id)
                return stored  # already terminated or failed: nothing to do
            record = await self._advance(record, LeaseEvent.TERMINATE, "terminated by the tenant")
        self._wake.set()
        return record

    async def mint(self, org_id: str, lease_id: str, ttl_s: int | None) -> Minted:
        assert self.kube is not None
        async with self._lock:
            record = self._owned(org_id, lease_id)
            if record is None:
                if await self.store.get(KIND, lease_id, org_id=org_id) is None:
                    raise not_found(lease_id)
                raise ForgeError(f"Lease {lease_id} has ended.", code="lease_not_active",
                                 status=409)
            if record.state != LeaseState.ACTIVE:
                raise ForgeError(
                    f"Lease {lease_id} is {record.state}; kubeconfigs are minted once it is "
                    "active.", code="lease_not_active", status=409)
        now = self.clock()
        # Never past the lease's end, but not under Kubernetes' 10-minute floor:
        # a token that would outlive the lease dies with its namespace.
        ttl = int(max(600.0, min(ttl_s or self.settings.kubeconfig_ttl_s,
                                 float(record.spec["ends_at"]) - now)))
        kubeconfig_id = "kc-" + secrets.token_hex(6)
        token = await asyncio.to_thread(self.kube.mint, lease_id, kubeconfig_id, ttl)
        async with self._lock:
            record = self._leases.get(lease_id, record)
            entries = [*record.status.get("kubeconfigs", []), {
                "id": kubeconfig_id, "created_at": now,
                "expires_at": min(token.expires_at, float(record.spec["ends_at"])),
                "revoked_at": None}]
            await self._save_status(record, {**record.status, "kubeconfigs": entries})
        return Minted(kubeconfig_id=kubeconfig_id, token=token, namespace=namespace_for(lease_id))

    async def revoke(self, org_id: str, lease_id: str, kubeconfig_id: str) -> ResourceRecord:
        assert self.kube is not None
        async with self._lock:
            record = self._owned(org_id, lease_id) or await self.store.get(
                KIND, lease_id, org_id=org_id)
            if record is None:
                raise not_found(lease_id)
            entries = record.status.get("kubeconfigs", [])
            if not any(e["id"] == kubeconfig_id for e in entries):
                raise ForgeError(f"Lease {lease_id} has no kubeconfig {kubeconfig_id}.",
                                 code="kubeconfig_not_found", status=404,
                                 param="kubeconfig_id")
        if LeaseState(record.state) in LIVE:
            await asyncio.to_thread(self.kube.revoke, lease_id, kubeconfig_id)
        now = self.clock()
        async with self._lock:
            record = self._leases.get(lease_id) or record
            entries = [{**e, "revoked_at": e["revoked_at"] or now}
                       if e["id"] == kubeconfig_id else e
                       for e in record.status.get("kubeconfigs", [])]
            return await self._save_status(record, {**record.status, "kubeconfigs": entries})

    def availability(self, query: AvailabilityQuery) -> list[GpuAvailability]:
        prices = self.settings.prices
        return [
            GpuAvailability(
                metro=row.metro, tier=row.tier, gpu_model=row.gpu_model, total=row.total,
                free=row.free, largest_on_node=row.largest_on_node,
                largest_in_nvlink_domain=row.largest_in_nvlink_domain,
                largest_in_rack=row.largest_in_rack,
                price_per_gpu_hour=prices.get(f"{row.gpu_model}/{row.tier}",
                                              prices.get(row.gpu_model)))
            for row in self.pool.availability()
            if (query.metro is None or row.metro == query.metro)
            and (query.tier is None or row.tier == query.tier)
            and (query.gpu_model is None or row.gpu_model == query.gpu_model)
        ]

    def _owned(self, org_id: str, lease_id: str) -> ResourceRecord | None:
        record = self._leases.get(lease_id)
        return record if record is not None and record.org_id == org_id else None

    # --- transitions (under the lock) ----------------------------------------------

    async def _advance(self, record: ResourceRecord, event: LeaseEvent, reason: str = "",
                       status: dict[str, Any] | None = None) -> ResourceRecord:
        to = LEASES.next(LeaseState(record.state), event)
        now = self.clock()
        status = dict(record.status if status is None else status)
        if to is LeaseState.ACTIVE:
            status["active_at"] = now
        if to in (LeaseState.EXPIRING, LeaseState.TERMINATED, LeaseState.FAILED):
            status.setdefault("ended_at", now)
        updated = await self.store.transition(record, event=event.value, to=to.value, now=now,
                                              reason=reason, status=status)
        if to in LIVE:
            self._leases[record.id] = updated
        else:
            self._leases.pop(record.id, None)
        if (LeaseState(record.state) in HOLDS_GPUS) != (to in HOLDS_GPUS):
            placement = placement_of(updated)
            (self.pool.allocate if to in HOLDS_GPUS else self.pool.release)(placement)
            self.on_change()
        log.info("lease changed", extra={"lease_id": record.id, "from": record.state,
                                         "to": to.value, "reason": reason})
        return updated

    async def _save_status(self, record: ResourceRecord, status: dict[str, Any]
                           ) -> ResourceRecord:
        updated = await self.store.update_status(record, status, self.clock())
        if record.id in self._leases:
            self._leases[record.id] = updated
        return updated

    # --- reconciling -------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile for ever: at every interval, and at once after a command."""
        await reconcile_forever(self.reconcile, self._wake,
                                self.settings.reconcile_interval_s, "lease")

    async def reconcile(self) -> None:
        """One pass: start what is due, end what is over, and make sure every
        lease in PROVISIONING or EXPIRING has its work running."""
        now = self.clock()
        async with self._lock:
            for record in list(self._leases.values()):
                state = LeaseState(record.state)
                ends_at = float(record.spec["ends_at"])
                if state is LeaseState.PENDING and now >= ends_at:
                    await self._advance(record, LeaseEvent.FAIL, "ended before it could start")
                elif state is LeaseState.PENDING and now >= float(record.spec["starts_at"]):
                    await self._start(record, now)
                elif state in (LeaseState.PROVISIONING, LeaseState.ACTIVE) and now >= ends_at:
                    await self._advance(record, LeaseEvent.END, "reached its end")
        for record in list(self._leases.values()):
            if (LeaseState(record.state) in RESUME and record.id not in self._work
                    and self._retry_at.get(record.id, 0.0) <= now):
                self._work[record.id] = asyncio.create_task(self._finish(record.id),
                                                            name=f"lease {record.id}")

    async def _start(self, record: ResourceRecord, now: float) -> None:
        try:
            placement = self._place(record.spec)
        except ForgeError as exc:
            await self._advance(record, LeaseEvent.FAIL, f"could not start: {exc}")
            return
        await self._advance(record, LeaseEvent.START, status={
            **record.status, "placement": [list(n) for n in placement.nodes],
            "scope": placement.scope, "provisioning_since": now})

    async def _finish(self, lease_id: str) -> None:
        """Drive one lease out of PROVISIONING or EXPIRING (or leave it for the next pass)."""
        try:
            await self._finish_once(lease_id)
        finally:
            self._work.pop(lease_id, None)

    async def _finish_once(self, lease_id: str) -> None:
        assert self.kube is not None
        record = self._leases.get(lease_id)
        if record is None:
            return
        nodes = [node for node, _ in placement_of(record).nodes]
        try:
            if record.state == LeaseState.PROVISIONING:
                await self._provision(record, nodes)
            elif (record.state == LeaseState.EXPIRING
                  and await asyncio.to_thread(self.kube.teardown, lease_id, nodes)):
                self._assign(nodes, "")  # its pods are gone: the agents take the GPUs back
                async with self._lock:
                    current = self._leases.get(lease_id)
                    if current is not None and current.state == LeaseState.EXPIRING:
                        await self._advance(current, LeaseEvent.TORN_DOWN,
                                            current.reason or "ended")
        except Exception as exc:
            failures = self._failures.get(lease_id, 0) + 1
            self._failures[lease_id] = failures
            backoff = min(30.0, self.settings.reconcile_interval_s * 2 ** (failures - 1))
            self._retry_at[lease_id] = self.clock() + backoff
            log.warning("lease work failed; retrying", extra={
                "lease_id": lease_id, "error": f"{type(exc).__name__}: {exc}",
                "retry_in_s": backoff})
        else:
            self._failures.pop(lease_id, None)
            self._retry_at.pop(lease_id, None)

    async def _provision(self, record: ResourceRecord, nodes: list[str]) -> None:
        assert self.kube is not None
        since = float(record.status.get("provisioning_since", self.clock()))
        # Spark leaves the nodes first: new requests already go elsewhere (the
        # view marks them leased); what runs there gets drain_timeout_s to end.
        while (any(self.spark_inflight(node) for node in nodes)  # noqa: ASYNC110 - heartbeats
               and self.clock() < since + self.settings.drain_timeout_s):
            await asyncio.sleep(0.2)
        # Then each agent stops its engines, so the GPUs' memory is the tenant's.
        self._assign(nodes, record.id)
        deadline = time.monotonic() + self.settings.handover_timeout_s
        while (waiting := [n for n in nodes if self.handed_over(n) not in (None, record.id)]):
            if time.monotonic() > deadline:
                log.warning("nodes did not confirm the handover; provisioning anyway",
                            extra={"lease_id": record.id, "nodes": waiting})
                break
            await asyncio.sleep(0.2)
        scope = LeaseScope(lease_id=record.id, org_id=record.org_id,
                           gpus=int(record.spec["gpu_count"]), nodes=tuple(nodes),
                           egress_cidrs=tuple(record.spec.get("egress_cidrs") or ()))
        try:
            await asyncio.to_thread(self.kube.provision, scope)
        except Exception as exc:
            if self.clock() < since + self.settings.provision_timeout_s:
                raise
            await self._roll_back(record.id, nodes, f"provisioning failed: {exc}")
            return
        async with self._lock:
            current = self._leases.get(record.id)
            if current is not None and current.state == LeaseState.PROVISIONING:
                await self._advance(current, LeaseEvent.PROVISIONED, "provisioned")

    async def _roll_back(self, lease_id: str, nodes: list[str], reason: str) -> None:
        assert self.kube is not None
        # Polled: Kubernetes deletes a namespace in its own time.
        while not await asyncio.to_thread(self.kube.teardown, lease_id, nodes):  # noqa: ASYNC110
            await asyncio.sleep(0.5)
        self._assign(nodes, "")
        async with self._lock:
            current = self._leases.get(lease_id)
            if current is not None and current.state == LeaseState.PROVISIONING:
                await self._advance(current, LeaseEvent.FAIL, reason)

    async def stop(self) -> None:
        for task in list(self._work.values()):
            task.cancel()
        await asyncio.gather(*self._work.values(), return_exceptions=True)
