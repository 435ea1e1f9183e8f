"""The scheduler's Vault: the single writer of racks.

Commands (reserve, release, Redfish credentials, Talos configs, attestation
reports) are applied one at a time under one lock, and every write is a
compare-and-set on the rack's row (``ResourceStore``), so two orgs racing for
the last rack get exactly one winner. The slow work — driving each node's BMC
through provisioning and cleaning (``nodes.py``), waiting for measured boot —
runs in the reconcile loop, one task per rack, resumed after a restart from
the progress stored (SIGKILL included). A node that fails sends the rack to
FAILED (provisioning) or MAINTENANCE (cleaning) with the reason. Time is an
injected clock (wall seconds) for what is stored and for the attestation
deadline.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Callable
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from volt.attestation.verifier import SignedVerdict
from volt.config import VaultSettings
from volt.lifecycle import Refusal, reconcile_forever
from volt.store.resources import ResourceRecord, ResourceStore, StaleResource
from volt.vault.credentials import CredentialBox
from volt.vault.inventory import KIND
from volt.vault.nodes import NodeDriver, RackMoved, fresh_progress
from volt.vault.redfish import Connect, connect_bmc
from volt.vault.redfish_credentials import new_credential
from volt.vault.report import build_report, public_jwk, sign_report
from volt.vault.states import RACKS, RESUME, RackEvent, RackState
from volt.vault.talos import KUBERNETES, control_planes, generate_secrets
from volt.wire import (
    RackReserve,
    RedfishCredentialMint,
    RedfishCredentialMinted,
    TalosConfigAnswer,
    TalosNode,
)

log = logging.getLogger(__name__)
TALOS_STATES = frozenset({RackState.RESERVED, RackState.PROVISIONING, RackState.ATTESTING,
                          RackState.READY, RackState.FAILED})
"""States in which the tenant may have its rack's Talos configuration."""


class VaultError(Refusal):
    """A Vault command refused."""


def not_found(rack_id: str) -> VaultError:
    return VaultError(f"No rack {rack_id}.", code="rack_not_found", status=404,
                      param="rack_id")


def talos_context(rack_id: str, reservation: str) -> str:
    """What the sealed Talos secrets belong to: this rack, this reservation."""
    return f"volt.vault.talos/{rack_id}/{reservation}"


def rack_gpu_model(spec: dict[str, Any]) -> str:
    models = sorted({n["gpu_model"] for n in spec["nodes"] if int(n["gpus"]) > 0})
    return "/".join(models) or "none"


def fits(record: ResourceRecord, command: RackReserve) -> bool:
    spec = record.spec
    if spec["metro"] != command.metro:
        return False
    if command.tier is not None and spec["tier"] != command.tier:
        return False
    if command.gpu_model is not None and rack_gpu_model(spec) != command.gpu_model:
        return False
    return command.nodes is None or len(spec["nodes"]) >= command.nodes


class Vault:
    def __init__(
        self,
        store: ResourceStore,
        settings: VaultSettings,
        box: CredentialBox,
        *,
        proxy_key: bytes = b"",
        signing_key: Ed25519PrivateKey | None = None,
        verdict_of: Callable[[str], SignedVerdict | None] = lambda node: None,
        verdict_ttl_s: float = 900.0,
        connect: Connect = connect_bmc,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.settings = settings
        self.box = box
        self.proxy_key = proxy_key
        """Hashes the tenants' Redfish proxy passwords (the proxy checks with it)."""
        self.signing_key = signing_key
        """The verifier's key: it signs attestation reports (None: reports refused)."""
        self.verdict_of = verdict_of
        """A node's latest signed verdict (the scheduler's attestation service)."""
        self.verdict_ttl_s = verdict_ttl_s
        self.connect = connect
        self.clock = clock
        self._lock = asyncio.Lock()
        self._work: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}
        self.nodes = NodeDriver(store, settings, box, connect=connect, clock=clock)
        """Drives each node's BMC through provisioning and cleaning."""

    # --- commands ----------------------------------------------------------------

    async def reserve(self, command: RackReserve) -> ResourceRecord:
        talos = command.talos_version or self.settings.talos_versions[0]
        if talos not in self.settings.talos_versions or talos not in KUBERNETES:
            raise VaultError(f"Talos {talos} is not offered; choose one of "
                             f"{', '.join(self.settings.talos_versions)}.",
                             code="invalid_talos_version", status=400, param="talos_version")
        async with self._lock:
            await self._choose(command)  # a clear refusal before any work
        # The tenant's cluster PKI, made now (outside the lock: an RSA key
        # takes a moment) and kept sealed for as long as the tenant holds the rack.
        bundle = await asyncio.to_thread(lambda: yaml.safe_dump(generate_secrets(),
                                                                sort_keys=False))
        async with self._lock:
            rack = await self._choose(command)  # again: another may have won meanwhile
            reservation = "rsv-" + secrets.token_hex(8)
            status = {"reservation": reservation, "talos_version": talos,
                      "created_by": command.created_by,
                      "talos_secrets": self.box.seal_as(bundle,
                                                        talos_context(rack.id, reservation)),
                      "nodes": fresh_progress(rack.spec["nodes"])}
            rack = await self._advance(rack, RackEvent.RESERVE, "reserved",
                                       status=status, org_id=command.org_id)
            rack = await self._advance(rack, RackEvent.PROVISION, "provisioning")
        log.info("rack reserved", extra={"rack_id": rack.id, "org_id": command.org_id})
        self._wake.set()
        return rack

    async def _choose(self, command: RackReserve) -> ResourceRecord:
        """Best fit: the smallest free rack that is large enough (under the lock)."""
        racks = [r for r in await self.store.in_states(KIND, [s.value for s in RackState])
                 if fits(r, command)]
        free = sorted((r for r in racks if r.state == RackState.AVAILABLE),
                      key=lambda r: (len(r.spec["nodes"]), r.id))
        if not racks:
            raise VaultError(self._no_such_rack(command), code="no_matching_rack",
                             status=400, param="metro")
        if not free:
            raise VaultError(
                f"No rack is free now: all {len(racks)} that match are taken. Try again "
                "later, or ask for another metro, tier or GPU model.",
                code="insufficient_capacity", status=503)
        return free[0]

    def _no_such_rack(self, command: RackReserve) -> str:
        wanted = [f"in metro {command.metro}"]
        if command.tier is not None:
            wanted.append(f"of tier {command.tier}")
        if command.gpu_model is not None:
            wanted.append(f"with {command.gpu_model} GPUs")
        if command.nodes is not None:
            wanted.append(f"of at least {command.nodes} nodes")
        return f"Volt has no rack {' '.join(wanted)}."

    async def release(self, org_id: str, rack_id: str) -> ResourceRecord:
        async with self._lock:
            while True:
                record = await self.store.get(KIND, rack_id, org_id=org_id)
                if record is None:
                    raise not_found(rack_id)
                if not RACKS.allows(RackState(record.state), RackEvent.RELEASE):
                    return record  # releasing, cleaning or in maintenance already
                task = self._work.pop(rack_id, None)
                if task is not None:
                    task.cancel()  # its provisioning or attesting is moot
                now = self.clock()
                revoked = [{**c, "revoked_at": c["revoked_at"] or now}
                           for c in record.status.get("redfish_credentials", [])]
                try:
                    record = await self._advance(
                        record, RackEvent.RELEASE, "released by the tenant",
                        status={**record.status, "redfish_credentials": revoked})
                    break
                except StaleResource:
                    continue  # its work wrote a node's progress meanwhile: read again
        self._wake.set()
        return record

    async def mint_credential(self, command: RedfishCredentialMint) -> RedfishCredentialMinted:
        if not self.proxy_key:
            raise VaultError("This scheduler has no Redfish proxy key.", code="no_proxy",
                             status=503)
        ttl = command.ttl_s or self.settings.redfish_credential_ttl_s
        async with self._lock:
            while True:
                record = await self.store.get(KIND, command.rack_id, org_id=command.org_id)
                if record is None:
                    raise not_found(command.rack_id)
                if record.state != RackState.READY:
                    raise VaultError(
                        f"Rack {command.rack_id} is {record.state}: Redfish credentials are "
                        "minted once it is ready.", code="rack_not_ready", status=409)
                entry, password = new_credential(self.proxy_key, record.id, now=self.clock(),
                                                 ttl_s=ttl, created_by=command.created_by)
                kept = record.status.get("redfish_credentials", [])
                try:
                    await self.store.update_status(record, {
                        **record.status, "redfish_credentials": [*kept, entry]}, self.clock())
                    break
                except StaleResource:
                    continue
        log.info("redfish credential minted", extra={"rack_id": record.id,
                                                     "credential_id": entry["id"]})
        return RedfishCredentialMinted(
            credential_id=entry["id"], rack_id=record.id, username=entry["username"],
            password=password, expires_at=entry["expires_at"])

    async def revoke_credential(self, org_id: str, rack_id: str, credential_id: str
                                ) -> ResourceRecord:
        async with self._lock:
            while True:
                record = await self.store.get(KIND, rack_id, org_id=org_id)
                if record is None:
                    raise not_found(rack_id)
                kept = record.status.get("redfish_credentials", [])
                if not any(c["id"] == credential_id for c in kept):
                    raise VaultError(f"Rack {rack_id} has no Redfish credential "
                                     f"{credential_id}.", code="credential_not_found",
                                     status=404, param="credential_id")
                now = self.clock()
                try:
                    return await self.store.update_status(record, {
                        **record.status, "redfish_credentials": [
                            {**c, "revoked_at": c["revoked_at"] or now}
                            if c["id"] == credential_id else c for c in kept]}, now)
                except StaleResource:
                    continue

    async def attestation_report(self, org_id: str, rack_id: str) -> str:
        if self.signing_key is None:
            raise VaultError("This scheduler has no verifier key.", code="no_verifier",
                             status=503)
        record = await self.store.get(KIND, rack_id, org_id=org_id)
        if record is None:
            raise not_found(rack_id)
        nodes = record.status.get("nodes", {})
        report = build_report(
            record.id, org_id,
            [(n["name"], nodes.get(n["name"], {}).get("booted_at")) for n in record.spec["nodes"]],
            self.verdict_of, now=self.clock(), ttl_s=self.verdict_ttl_s)
        report["state"] = record.state
        return sign_report(report, self.signing_key)

    async def talos_config(self, org_id: str, rack_id: str) -> TalosConfigAnswer:
        record = await self.store.get(KIND, rack_id, org_id=org_id)
        if record is None:
            raise not_found(rack_id)
        sealed = record.status.get("talos_secrets")
        if sealed is None or RackState(record.state) not in TALOS_STATES:
            raise VaultError(f"Rack {rack_id} is {record.state}: its Talos configuration is "
                             "there from reservation until release.",
                             code="rack_not_ready", status=409)
        names = [n["name"] for n in record.spec["nodes"]]
        planes = set(control_planes(names))
        return TalosConfigAnswer(
            secrets=self.box.open_as(sealed, talos_context(
                rack_id, record.status["reservation"])).encode(),
            talos_version=record.status["talos_version"], cluster_name=rack_id,
            endpoint=record.spec.get("talos_endpoint") or f"https://{names[0]}:6443",
            nodes=[TalosNode(name=n["name"], control_plane=n["name"] in planes,
                             install_disk=n.get("install_disk", "/dev/nvme0n1"))
                   for n in record.spec["nodes"]])

    def verifier_keys(self) -> dict[str, Any]:
        return {"keys": [public_jwk(self.signing_key)] if self.signing_key else []}

    # --- transitions ----------------------------------------------------------------

    async def _advance(self, record: ResourceRecord, event: RackEvent, reason: str = "", *,
                       status: dict[str, Any] | None = None, org_id: str | None = None
                       ) -> ResourceRecord:
        to = RACKS.next(RackState(record.state), event)
        now = self.clock()
        status = dict(record.status if status is None else status)
        status[f"{to.value}_at"] = now
        updated = await self.store.transition(record, event=event.value, to=to.value, now=now,
                                              reason=reason, status=status, org_id=org_id)
        log.info("rack changed", extra={"rack_id": record.id, "from": record.state,
                                        "to": to.value, "reason": reason})
        return updated

    # --- reconciling ------------------------------------------------------------------

    async def run(self) -> None:
        """Reconcile for ever: at every interval, and at once after a command."""
        await reconcile_forever(self.reconcile, self._wake,
                                self.settings.reconcile_interval_s, "rack")

    async def reconcile(self) -> None:
        """Make sure every rack in a state with work to do has its work running
        (after a restart: the racks found in those states)."""
        now = self.clock()
        for record in await self.store.in_states(KIND, [s.value for s in RESUME]):
            if record.id not in self._work and self._retry_at.get(record.id, 0.0) <= now:
                self._work[record.id] = asyncio.create_task(self._drive(record.id),
                                                            name=f"rack {record.id}")

    async def _drive(self, rack_id: str) -> None:
        try:
            await self._drive_once(rack_id)
        except (RackMoved, StaleResource):
            pass  # released, or changed by an operator: the next pass looks again
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            failures = self._failures.get(rack_id, 0) + 1
            self._failures[rack_id] = failures
            backoff = min(60.0, self.settings.reconcile_interval_s * 2 ** (failures - 1))
            self._retry_at[rack_id] = self.clock() + backoff
            log.warning("rack work failed; retrying", extra={
                "rack_id": rack_id, "error": f"{type(exc).__name__}: {exc}",
                "retry_in_s": backoff})
        else:
            self._failures.pop(rack_id, None)
            self._retry_at.pop(rack_id, None)
        finally:
            if self._work.get(rack_id) is asyncio.current_task():
                del self._work[rack_id]

    async def _drive_once(self, rack_id: str) -> None:
        """Take the rack through its states until it rests (or waits for verdicts)."""
        while True:
            record = await self.store.get(KIND, rack_id)
            if record is None or RackState(record.state) not in RESUME:
                return
            state = RackState(record.state)
            if state is RackState.PROVISIONING:
                await self._provision(record)
            elif state is RackState.ATTESTING:
                if not await self._attest(record):
                    return  # verdicts still to come: the next pass looks again
            elif state is RackState.RELEASING:
                await self._advance(record, RackEvent.CLEAN, "cleaning", status={
                    **record.status, "nodes": fresh_progress(record.spec["nodes"])})
            elif state is RackState.CLEANING:
                await self._clean(record)

    # --- provisioning -------------------------------------------------------------------

    def image_url(self, talos_version: str) -> str:
        return self.settings.image_url.format(talos_version=talos_version,
                                              schematic=self.settings.talos_schematic)

    async def _provision(self, record: ResourceRecord) -> None:
        record, failed = await self.nodes.provision(
            record, self.image_url(record.status["talos_version"]))
        if failed:
            await self._advance(record, RackEvent.FAIL, "; ".join(str(f) for f in failed))
        else:
            await self._advance(record, RackEvent.BOOTED, "every node booted Talos")

    # --- attesting ---------------------------------------------------------------------

    async def _attest(self, record: ResourceRecord) -> bool:
        """Decide from the nodes' verdicts; False: still waiting for some."""
        now = self.clock()
        nodes = record.status.get("nodes", {})
        pending, failed = [], []
        for node in record.spec["nodes"]:
            name = node["name"]
            signed = self.verdict_of(name)
            booted_at = float(nodes.get(name, {}).get("booted_at") or 0.0)
            if signed is None or signed.verdict.time_ms / 1000 < booted_at:
                pending.append(name)  # no verdict of this boot yet
            elif not signed.verdict.passed:
                findings = "; ".join(f"{f.component}: {f.reason}"
                                     for f in signed.verdict.findings if f.severity == "critical")
                failed.append(f"node {name} failed measured boot ({findings})")
        if failed:
            await self._advance(record, RackEvent.FAIL, "; ".join(failed))
            return True
        if not pending:
            await self._advance(record, RackEvent.ATTESTED, "every node passed measured boot")
            return True
        if not self.settings.require_attestation:
            await self._advance(record, RackEvent.ATTESTED,
                                f"not attested: {', '.join(pending)} (vault.require_attestation"
                                " is off)")
            return True
        since = float(record.status.get("attesting_at") or now)
        if now > since + self.settings.attest_timeout_s:
            await self._advance(record, RackEvent.FAIL,
                                f"no passing measured boot within "
                                f"{self.settings.attest_timeout_s:.0f} s from {', '.join(pending)}")
            return True
        return False

    # --- cleaning ----------------------------------------------------------------------

    async def _clean(self, record: ResourceRecord) -> None:
        record, failed = await self.nodes.clean(
            record, erase=record.spec.get("cleaning", "erase") == "erase")
        if failed:
            await self._advance(record, RackEvent.CLEAN_FAILED,
                                "; ".join(str(f) for f in failed))
        else:
            await self._advance(record, RackEvent.CLEANED, "every node cleaned",
                                org_id="", status={
                                    "cleaned_at": self.clock(),
                                    "last_cleaning": {name: n.get("steps", [])
                                                      for name, n in
                                                      record.status.get("nodes", {}).items()}})

    async def stop(self) -> None:
        for task in list(self._work.values()):
            task.cancel()
        await asyncio.gather(*self._work.values(), return_exceptions=True)
        self.nodes.shutdown()
