"""The Vault routes: racks, their attestation report, the verifier's keys.

Every change is a command to the scheduler (the single writer of racks) over
``volt.sched.vault``; reads come from the store. Authentication and the
route's rule ran before these (``app.identify``); a rack another org holds —
or nobody holds — answers 404, because the store lookup and the scheduler
both only find the caller's own.
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import yaml
from quart import Quart, Response, g, request

from volt.control_api.errors import InvalidRequest, NotFound, PermissionDenied
from volt.control_api.resource_pages import org_page
from volt.control_api.scheduler_commands import SchedulerCommands, json_response, known_query
from volt.control_api.serving import decode_request
from volt.identity import Principal
from volt.protocol.vault import (
    AttestationReport,
    CleaningStep,
    MintRedfishCredentialRequest,
    NodeAttestation,
    Rack,
    RackList,
    RackNode,
    RedfishCredential,
    RedfishCredentialInfo,
    ReserveRackRequest,
    TalosConfig,
    TalosNodeConfig,
)
from volt.store.database import Database
from volt.store.resources import ResourceRecord, ResourceStore
from volt.vault.report import verify_report
from volt.vault.states import RackState
from volt.vault.talos import KUBERNETES, machine_config, talosconfig, tar_of, to_yaml
from volt.wire import (
    VAULT,
    AttestationReportAnswer,
    AttestationReportQuery,
    RackRelease,
    RackReserve,
    RedfishCredentialMint,
    RedfishCredentialMinted,
    RedfishCredentialRevoke,
    TalosConfigAnswer,
    TalosConfigQuery,
    VaultRefused,
    VerifierKeysAnswer,
    VerifierKeysQuery,
    subjects,
)

KIND = "rack"
STATES = tuple(state.value for state in RackState if state is not RackState.AVAILABLE)
_reserve = msgspec.json.Decoder(ReserveRackRequest)
_mint = msgspec.json.Decoder(MintRedfishCredentialRequest)


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


def rack_object(record: ResourceRecord) -> Rack:
    spec, status = record.spec, record.status
    progress: dict[str, dict[str, Any]] = status.get("nodes", {})
    models = sorted({n["gpu_model"] for n in spec["nodes"] if int(n["gpus"]) > 0})
    nodes = []
    for node in spec["nodes"]:
        state = progress.get(node["name"], {})
        nodes.append(RackNode(
            name=node["name"], gpu_model=node["gpu_model"], gpus=int(node["gpus"]),
            state=state.get("state", "pending"), step=state.get("step", ""),
            running=state.get("running", ""), attempts=int(state.get("attempts", 0)),
            last_error=state.get("last_error", ""), boot=state.get("boot"),
            booted_at=_int(state.get("booted_at")),
            cleaning=[CleaningStep(step=s["step"], outcome=s["outcome"])
                      for s in state.get("steps", [])]))
    return Rack(
        id=record.id, state=record.state, reason=record.reason,  # type: ignore[arg-type]
        metro=spec["metro"], tier=spec["tier"], gpu_model="/".join(models) or "none",
        gpu_count=sum(int(n["gpus"]) for n in spec["nodes"]),
        cleaning_policy=spec.get("cleaning", "erase"),
        talos_version=status.get("talos_version"), reserved_at=_int(status.get("reserved_at")),
        ready_at=_int(status.get("ready_at")), released_at=_int(status.get("releasing_at")),
        nodes=nodes, redfish_credentials=[
            RedfishCredentialInfo(id=c["id"], username=c["username"],
                                  created_at=int(c["created_at"]),
                                  expires_at=int(c["expires_at"]),
                                  revoked_at=_int(c["revoked_at"]))
            for c in status.get("redfish_credentials", [])])


def render_talos(answer: TalosConfigAnswer, node: str | None) -> TalosConfig:
    """Every node's machine configuration (or one node's), from the rack's bundle."""
    bundle = yaml.safe_load(answer.secrets)
    names = [n.name for n in answer.nodes]
    return TalosConfig(
        rack_id=answer.cluster_name, talos_version=answer.talos_version,
        kubernetes_version=KUBERNETES[answer.talos_version], cluster_name=answer.cluster_name,
        endpoint=answer.endpoint,
        nodes=[TalosNodeConfig(
            node=n.name, role="controlplane" if n.control_plane else "worker",
            config=to_yaml(machine_config(
                bundle, node=n.name, control_plane=n.control_plane,
                cluster_name=answer.cluster_name, endpoint=answer.endpoint,
                install_disk=n.install_disk, talos_version=answer.talos_version)))
            for n in answer.nodes if node is None or n.name == node],
        talosconfig=yaml.safe_dump(talosconfig(bundle, context=answer.cluster_name,
                                               endpoints=names), sort_keys=False),
        secrets=answer.secrets.decode())


def register_vault_routes(app: Quart, services: Any) -> None:
    def commands() -> SchedulerCommands:
        assert services.nc is not None
        return SchedulerCommands(services.nc, subjects.SCHED_VAULT, VAULT, VaultRefused, "rack")

    def racks() -> ResourceStore:
        db: Database = services.db
        return ResourceStore(db)

    async def own_rack(principal: Principal, rack_id: str) -> ResourceRecord:
        record = await racks().get(KIND, rack_id, org_id=principal.org_id)
        if record is None or not principal.org_id:
            raise NotFound(f"No rack {rack_id}.", param="rack_id", code="rack_not_found")
        return record

    async def verifier_jwks() -> dict[str, Any]:
        answer = await commands().ask(VerifierKeysQuery())
        assert isinstance(answer, VerifierKeysAnswer)
        jwks: dict[str, Any] = msgspec.json.decode(answer.jwks)
        return jwks

    @app.post("/v1/vault/racks")
    async def reserve_rack() -> Response:
        principal: Principal = g.principal
        if principal.mode == "test":
            raise PermissionDenied("Test keys cannot reserve racks: use a live key.",
                                   code="test_key_not_allowed")
        body: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
        req = decode_request(_reserve, body)
        answer = await commands().ask(RackReserve(
            org_id=principal.org_id, created_by=principal.credential_id, metro=req.metro,
            tier=req.tier, gpu_model=req.gpu_model, nodes=req.nodes,
            talos_version=req.talos_version))
        record = await own_rack(principal, getattr(answer, "rack_id", ""))
        return json_response(rack_object(record), status=201)

    @app.get("/v1/vault/racks")
    async def list_racks() -> Response:
        principal: Principal = g.principal
        page = await org_page(racks(), KIND, principal, request.args, states=STATES,
                              noun="rack")
        data = [rack_object(record) for record in page.records]
        return json_response(RackList(data=data, has_more=page.has_more,
                                      first_id=data[0].id if data else None,
                                      last_id=data[-1].id if data else None))

    @app.get("/v1/vault/racks/<rack_id>")
    async def get_rack(rack_id: str) -> Response:
        known_query(request.args, ())
        return json_response(rack_object(await own_rack(g.principal, rack_id)))

    @app.delete("/v1/vault/racks/<rack_id>")
    async def release_rack(rack_id: str) -> Response:
        principal: Principal = g.principal
        await own_rack(principal, rack_id)  # another org's: 404 before anything is asked
        await commands().ask(RackRelease(org_id=principal.org_id, rack_id=rack_id))
        return json_response(rack_object(await own_rack(principal, rack_id)))

    @app.post("/v1/vault/racks/<rack_id>/redfish-credentials")
    async def mint_redfish_credential(rack_id: str) -> Response:
        principal: Principal = g.principal
        await own_rack(principal, rack_id)
        body: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
        req = decode_request(_mint, body) if body.strip() else MintRedfishCredentialRequest()
        answer = await commands().ask(RedfishCredentialMint(
            org_id=principal.org_id, rack_id=rack_id, ttl_s=req.ttl_s,
            created_by=principal.credential_id))
        assert isinstance(answer, RedfishCredentialMinted)
        return json_response(RedfishCredential(
            id=answer.credential_id, rack_id=rack_id, endpoint=services.config
            .redfish_proxy_url(), username=answer.username, password=answer.password,
            expires_at=int(answer.expires_at)), status=201)

    @app.delete("/v1/vault/racks/<rack_id>/redfish-credentials/<credential_id>")
    async def revoke_redfish_credential(rack_id: str, credential_id: str) -> Response:
        principal: Principal = g.principal
        await own_rack(principal, rack_id)
        await commands().ask(RedfishCredentialRevoke(
            org_id=principal.org_id, rack_id=rack_id, credential_id=credential_id))
        return json_response(rack_object(await own_rack(principal, rack_id)))

    @app.get("/v1/vault/racks/<rack_id>/attestation")
    async def attestation(rack_id: str) -> Response:
        principal: Principal = g.principal
        known_query(request.args, ())
        await own_rack(principal, rack_id)
        answer = await commands().ask(AttestationReportQuery(org_id=principal.org_id,
                                                             rack_id=rack_id))
        assert isinstance(answer, AttestationReportAnswer)
        # Decoded from the signed token itself, so the fields shown are exactly
        # the ones signed.
        report = verify_report(answer.jws, await verifier_jwks())
        return json_response(AttestationReport(
            rack_id=report["rack_id"], state=report["state"],
            generated_at=int(report["generated_at"]), all_passed=bool(report["all_passed"]),
            nodes=[NodeAttestation(node=n["node"], state=n["state"], verdict=n["verdict"])
                   for n in report["nodes"]], jws=answer.jws))

    @app.get("/v1/vault/racks/<rack_id>/talos-config")
    async def talos_config(rack_id: str) -> Response:
        principal: Principal = g.principal
        known_query(request.args, ("node", "format"))
        node, form = request.args.get("node"), request.args.get("format", "json")
        if form not in ("json", "yaml", "tar"):
            raise InvalidRequest("`format` must be json, yaml or tar.", param="format")
        if form == "yaml" and not node:
            raise InvalidRequest("`format=yaml` is one node's configuration: give `node`.",
                                 param="node")
        await own_rack(principal, rack_id)
        answer = await commands().ask(TalosConfigQuery(org_id=principal.org_id,
                                                       rack_id=rack_id))
        assert isinstance(answer, TalosConfigAnswer)
        if node is not None and node not in {n.name for n in answer.nodes}:
            raise NotFound(f"Rack {rack_id} has no node {node}.", param="node",
                           code="node_not_found")
        rendered = await asyncio.to_thread(render_talos, answer, node)
        if form == "yaml":
            return Response(rendered.nodes[0].config, content_type="application/yaml")
        if form == "tar":
            files = {"secrets.yaml": rendered.secrets, "talosconfig": rendered.talosconfig,
                     **{f"{n.node}.yaml": n.config for n in rendered.nodes}}
            response = Response(tar_of(files), content_type="application/x-tar")
            response.headers["Content-Disposition"] = (
                f'attachment; filename="{rack_id}-talos.tar"')
            return response
        return json_response(rendered)

    @app.get("/.well-known/volt/verifier-keys")
    async def verifier_keys() -> Response:
        response = json_response(await verifier_jwks())
        response.headers["Cache-Control"] = "public, max-age=300"
        return response
