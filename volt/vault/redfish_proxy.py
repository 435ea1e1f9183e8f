"""Volt's Redfish proxy: a tenant reaches its rack's BMCs without ever holding
a BMC password.

It speaks Redfish to the tenant — the DMTF service root, SessionService
(login with ``POST .../Sessions``, then ``X-Auth-Token``; or HTTP Basic on
every call), and ``Systems`` — with the credentials Volt minted for one rack
(``redfish_credentials.py``). It shows that rack's systems only, each named
by its node (never by the BMC's own id), and forwards to the node's BMC, with
the real credentials, only what a tenant may do:

* read its systems' inventory and logs (any ``GET`` under ``/Systems/<node>``);
* power (``ComputerSystem.Reset``), the boot override (``PATCH`` of ``Boot``
  only), and virtual media (``InsertMedia``, ``EjectMedia``, ``PATCH``).

Everything else is refused with Redfish's own error body: AccountService,
UpdateService (firmware), Managers (the BMC's network and certificates),
CertificateService and the rest of the tree (403), another rack's systems,
or anything not there (404); a missing, wrong, expired or revoked credential
is 401. Links in a BMC's answer that lead outside the tenant's systems are
taken out, so what the proxy shows is all it serves (and so is DMTF's
mockup-only ``@Redfish.Copyright``). DMTF's redfish-service-validator finds
nothing wrong the proxy adds to a BMC's answers (``tests/e2e/test_vault.py``).
Every call, allowed or not, is audited (metadata and a digest of the body,
never the body).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
from quart import Quart, Response, request

from volt.identity.principal import spiffe_id
from volt.store.resources import ResourceRecord, ResourceStore
from volt.vault.credentials import CredentialBox
from volt.vault.inventory import KIND
from volt.vault.redfish_credentials import (
    Session,
    issue_session,
    matches,
    rack_of,
    read_session,
    usable,
)
from volt.vault.states import RackState
from volt.wire import AuditEvent

log = logging.getLogger(__name__)
REGISTRY = "Base.1.8"
SERVICE_UUID = str(uuid.uuid5(uuid.NAMESPACE_URL, "volt.vault.redfish-proxy"))
REFUSED = {
    "AccountService": "BMC accounts are Volt's: tenants get credentials of the proxy instead",
    "UpdateService": "firmware updates are done by Volt",
    "Managers": "the BMC itself (its network, certificates and accounts) is Volt's",
    "CertificateService": "the BMC's certificates are Volt's",
    "Chassis": "chassis controls are Volt's",
    "EventService": "event subscriptions are not offered",
    "TaskService": "tasks are not offered",
}
ACTIONS = {"ComputerSystem.Reset", "VirtualMedia.InsertMedia", "VirtualMedia.EjectMedia"}
BOOT_FIELDS = {"BootSourceOverrideTarget", "BootSourceOverrideEnabled",
               "BootSourceOverrideMode", "UefiTargetBootSourceOverride", "HttpBootUri",
               "BootNext"}
MEDIA_FIELDS = {"Image", "Inserted", "WriteProtected", "TransferProtocolType",
                "TransferMethod"}
_VIRTUAL_MEDIA = re.compile(r"^VirtualMedia/[^/]+$")
_MEDIA_ACTION = re.compile(r"^VirtualMedia/[^/]+/Actions/(VirtualMedia\.\w+)$")
_encoder = msgspec.json.Encoder()


class RedfishError(Exception):
    def __init__(self, status: int, message_id: str, message: str, resolution: str = "",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message_id = message_id
        self.resolution = resolution
        self.headers = headers or {}

    def response(self) -> Response:
        message_id = f"{REGISTRY}.{self.message_id}"
        body = {"error": {"code": message_id, "message": str(self), "@Message.ExtendedInfo": [{
            "@odata.type": "#Message.v1_1_1.Message", "MessageId": message_id,
            "Message": str(self), "Severity": "Critical",
            "Resolution": self.resolution or "None."}]}}
        return Response(_encoder.encode(body), status=self.status,
                        content_type="application/json", headers=self.headers)


def unauthorized(why: str) -> RedfishError:
    return RedfishError(401, "NoValidSession", why,
                        "Log in with a credential from volt vault redfish-credentials.",
                        {"WWW-Authenticate": 'Basic realm="Volt Redfish proxy"'})


def missing(path: str) -> RedfishError:
    return RedfishError(404, "ResourceMissingAtURI", f"The resource at {path} does not exist.")


def forbidden(why: str) -> RedfishError:
    return RedfishError(403, "InsufficientPrivilege",
                        f"There are insufficient privileges for this operation: {why}.")


@dataclass(frozen=True, slots=True)
class Tenant:
    rack: ResourceRecord
    credential: dict[str, Any]
    session: Session | None = None

    def node(self, name: str) -> dict[str, Any] | None:
        return next((n for n in self.rack.spec["nodes"] if n["name"] == name), None)


@dataclass
class Proxy:
    store: ResourceStore
    box: CredentialBox
    key: bytes
    trust_domain: str = "volt.local"
    record: Callable[[AuditEvent], None] = lambda event: None
    can_audit: Callable[[], bool] = lambda: True
    """False while the audit log cannot take events: calls are then refused (503)."""
    clock: Callable[[], float] = time.time
    bmc_timeout_s: float = 30.0
    rack_cache_s: float = 1.0
    _racks: dict[str, tuple[float, ResourceRecord | None]] = field(default_factory=dict)
    _ended: set[str] = field(default_factory=set)
    """Sessions deleted on this replica (a token otherwise lives until its credential ends)."""
    _http: dict[bool, httpx.AsyncClient] = field(default_factory=dict)

    def client(self, verify: bool) -> httpx.AsyncClient:
        if verify not in self._http:
            self._http[verify] = httpx.AsyncClient(verify=verify, timeout=self.bmc_timeout_s)
        return self._http[verify]

    async def close(self) -> None:
        for client in self._http.values():
            await client.aclose()

    async def rack(self, rack_id: str) -> ResourceRecord | None:
        """The rack's row, read at most once a second (revocations land within it)."""
        now = time.monotonic()
        cached = self._racks.get(rack_id)
        if cached is not None and now - cached[0] < self.rack_cache_s:
            return cached[1]
        record = await self.store.get(KIND, rack_id)
        self._racks[rack_id] = (now, record)
        return record

    async def _tenant(self, username: str) -> tuple[ResourceRecord, dict[str, Any]] | None:
        rack_id = rack_of(username)
        record = await self.rack(rack_id) if rack_id else None
        if record is None or record.state != RackState.READY:
            return None
        entry = next((c for c in record.status.get("redfish_credentials", [])
                      if c["username"] == username), None)
        if entry is None or not usable(entry, self.clock()):
            return None
        return record, entry

    async def login(self, username: str, password: str) -> Tenant:
        found = await self._tenant(username)
        if found is None or not matches(self.key, found[1], password):
            raise unauthorized("The user name or password is not valid (or has expired or "
                               "been revoked).")
        return Tenant(found[0], found[1])

    async def authenticate(self, headers: Any) -> Tenant:
        token = headers.get("X-Auth-Token")
        if token:
            session = read_session(self.key, token, self.clock())
            found = await self._tenant(session.username) if session is not None else None
            if session is None or found is None or session.id in self._ended:
                raise unauthorized("The session is not valid (expired, ended or revoked).")
            return Tenant(found[0], found[1], session)
        authorization = headers.get("Authorization", "")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() != "basic":
            raise unauthorized("Log in first: HTTP Basic or a Redfish session.")
        try:
            username, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise unauthorized("The Authorization header is not valid Basic.") from None
        return await self.login(username, password)

    def start_session(self, tenant: Tenant) -> tuple[Session, str]:
        return issue_session(self.key, tenant.credential["username"],
                             float(tenant.credential["expires_at"]))

    def end_session(self, session_id: str) -> None:
        self._ended.add(session_id)

    # --- forwarding --------------------------------------------------------------

    async def forward(self, tenant: Tenant, name: str, method: str, rest: str,
                      body: bytes) -> Response:
        node = tenant.node(name)
        if node is None:
            raise missing(f"/redfish/v1/Systems/{name}")  # another rack's, or none
        self._allowed(method, rest, body)
        system_id = node["system_id"]
        bmc_path = f"/redfish/v1/Systems/{system_id}" + (f"/{rest}" if rest else "")
        password = self.box.open(node["bmc_password"], rack_id=tenant.rack.id,
                                 node=node["name"])
        try:
            answer = await self.client(bool(node.get("verify_tls", True))).request(
                method, node["bmc_url"].rstrip("/") + bmc_path,
                auth=(node["bmc_username"], password), content=body or None,
                headers={"Content-Type": "application/json"} if body else None)
        except httpx.HTTPError as exc:
            raise RedfishError(502, "GeneralError",
                               f"The BMC of {name} did not answer ({type(exc).__name__}).",
                               "Try again; if it persists, the node's BMC is down.") from exc
        headers = {k: v for k, v in answer.headers.items()
                   if k.lower() in ("etag", "allow", "retry-after")}
        if "location" in answer.headers:
            headers["Location"] = _rename(answer.headers["location"], system_id, name)
        content = answer.content
        if "json" in answer.headers.get("content-type", "") and content:
            try:
                document = msgspec.json.decode(content)
            except msgspec.DecodeError:
                document = None
            if document is not None:
                content = _encoder.encode(_scoped(document, system_id, name))
        return Response(content, status=answer.status_code, headers=headers,
                        content_type=answer.headers.get("content-type", "application/json"))

    def _allowed(self, method: str, rest: str, body: bytes) -> None:
        if method == "GET":
            return  # inventory and logs: read-only
        fields = _fields(body) if method == "PATCH" else set()
        if method == "POST" and rest == "Actions/ComputerSystem.Reset":
            return
        if method == "PATCH" and rest == "":
            if fields != {"Boot"} or not set(_object(body).get("Boot") or {}) <= BOOT_FIELDS:
                raise forbidden("on a system, only Boot (the boot override) may be changed")
            return
        if method == "PATCH" and _VIRTUAL_MEDIA.match(rest):
            if not fields <= MEDIA_FIELDS:
                raise forbidden(f"on virtual media, only {', '.join(sorted(MEDIA_FIELDS))} "
                                "may be changed")
            return
        action = _MEDIA_ACTION.match(rest)
        if method == "POST" and action and action[1] in ACTIONS:
            return
        raise forbidden(f"{method} of {rest or 'the system'} is not one of the operations a "
                        "tenant may perform (power, boot override, virtual media)")


def _object(body: bytes) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(body) if body else {}
    except msgspec.DecodeError:
        raise RedfishError(400, "MalformedJSON", "The request body is not valid JSON.") from None
    if not isinstance(value, dict):
        raise RedfishError(400, "MalformedJSON", "The request body must be a JSON object.")
    return value


def _fields(body: bytes) -> set[str]:
    return {k for k in _object(body) if not k.startswith("@")}


def _rename(text: str, system_id: str, name: str) -> str:
    return text.replace(f"/redfish/v1/Systems/{system_id}", f"/redfish/v1/Systems/{name}")


def _inside(link: str, name: str) -> bool:
    path = link.split("#")[0].rstrip("/")
    return path == f"/redfish/v1/Systems/{name}" or path.startswith(
        f"/redfish/v1/Systems/{name}/")


def _is_link(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"@odata.id"}


def _scoped(value: Any, system_id: str, name: str) -> Any:
    """The BMC's answer as the tenant sees it: the system named by its node,
    and no link that leads outside it."""
    if isinstance(value, str):
        return _rename(value, system_id, name)
    if isinstance(value, list):
        items = [_scoped(v, system_id, name) for v in value]
        return [v for v in items if not (_is_link(v) and not _inside(v["@odata.id"], name))]
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key == "@Redfish.Copyright":
                continue  # DMTF: for mockups only (emulated BMCs send it), never a service
            scoped = _scoped(item, system_id, name)
            if _is_link(scoped) and key != "@odata.id" and not _inside(scoped["@odata.id"],
                                                                     name):
                continue  # a link out of the tenant's systems
            if isinstance(item, list) and item and not scoped:
                continue  # a list of such links, now empty
            out[key] = scoped
        if "Members" in out and isinstance(out["Members"], list):
            out["Members@odata.count"] = len(out["Members"])
        if out.get("Id") == system_id:
            out["Id"] = name
        return out
    return value


def _json(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(_encoder.encode(value), status=status, content_type="application/json",
                    headers=headers or {})


def service_root() -> dict[str, Any]:
    return {
        "@odata.type": "#ServiceRoot.v1_11_0.ServiceRoot", "@odata.id": "/redfish/v1/",
        "Id": "RootService", "Name": "Volt Redfish proxy", "RedfishVersion": "1.11.0",
        "UUID": SERVICE_UUID, "Vendor": "Volt",
        "Systems": {"@odata.id": "/redfish/v1/Systems"},
        "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
        "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
    }


def _session_body(session: Session) -> dict[str, Any]:
    return {"@odata.type": "#Session.v1_3_0.Session",
            "@odata.id": f"/redfish/v1/SessionService/Sessions/{session.id}",
            "Id": session.id, "Name": "User Session", "UserName": session.username}


def create_proxy_app(proxy: Proxy) -> Quart:
    app = Quart("volt-redfish-proxy")
    app.config["MAX_CONTENT_LENGTH"] = 1 << 20

    @app.route("/redfish", methods=["GET"])
    async def versions() -> Response:
        return _json({"v1": "/redfish/v1/"})

    @app.route("/redfish/<path:path>", methods=["GET", "POST", "PATCH", "PUT", "DELETE"])
    async def redfish(path: str) -> Response:
        started = time.time()
        body: bytes = await request.get_data(as_text=False)  # type: ignore[assignment]
        call = Call(route="/redfish/" + path)
        try:
            if not proxy.can_audit():
                raise RedfishError(503, "ServiceTemporarilyUnavailable",
                                   "The audit log cannot be reached: no call is served "
                                   "unaudited.", headers={"Retry-After": "5"})
            response = await _handle(proxy, call, path, body)
        except RedfishError as error:
            response = error.response()
        proxy.record(_audit_event(proxy, call, body, response.status_code, started))
        return response

    return app


@dataclass
class Call:
    """What one request was, for its audit event."""

    route: str
    tenant: Tenant | None = None
    resources: dict[str, str] = field(default_factory=dict)


async def _handle(proxy: Proxy, call: Call, path: str, body: bytes) -> Response:
    parts = [p for p in path.split("/") if p]
    if not parts or parts[0] != "v1":
        raise missing("/redfish/" + path)
    parts = parts[1:]
    if not parts:
        call.route = "/redfish/v1/"
        return _json(service_root())
    call.route = "/redfish/v1/" + parts[0]
    if parts == ["odata"]:
        return _json({"@odata.context": "/redfish/v1/$metadata", "value": [
            {"name": "Systems", "kind": "Singleton", "url": "/redfish/v1/Systems"},
            {"name": "SessionService", "kind": "Singleton",
             "url": "/redfish/v1/SessionService"}]})
    if parts == ["SessionService", "Sessions"] and request.method == "POST":
        call.route = "/redfish/v1/SessionService/Sessions"
        login = _object(body)
        call.tenant = await proxy.login(str(login.get("UserName", "")),
                                        str(login.get("Password", "")))
        session, token = proxy.start_session(call.tenant)
        return _json(_session_body(session), 201, {
            "X-Auth-Token": token,
            "Location": f"/redfish/v1/SessionService/Sessions/{session.id}"})
    call.tenant = tenant = await proxy.authenticate(request.headers)
    call.resources = {"rack_id": tenant.rack.id}
    if parts[0] == "SessionService":
        call.route = "/redfish/v1/SessionService" + ("/Sessions" if parts[1:] else "") + (
            "/{session_id}" if len(parts) > 2 else "")
        return _sessions(proxy, tenant, parts[1:], request.method)
    if parts[0] == "Systems":
        if len(parts) == 1:
            if request.method != "GET":
                raise forbidden("the system collection is read-only")
            members = [{"@odata.id": f"/redfish/v1/Systems/{n['name']}"}
                       for n in tenant.rack.spec["nodes"]]
            return _json({"@odata.type": "#ComputerSystemCollection.ComputerSystemCollection",
                          "@odata.id": "/redfish/v1/Systems",
                          "Name": "Computer System Collection",
                          "Members@odata.count": len(members), "Members": members})
        node, rest = parts[1], "/".join(parts[2:])
        call.route = "/redfish/v1/Systems/{node}" + (f"/{rest}" if rest else "")
        call.resources["node"] = node
        return await proxy.forward(tenant, node, request.method, rest, body)
    if parts[0] in REFUSED:
        raise forbidden(REFUSED[parts[0]])
    raise missing("/redfish/v1/" + "/".join(parts))


def _sessions(proxy: Proxy, tenant: Tenant, parts: list[str], method: str) -> Response:
    if not parts:
        if method != "GET":
            raise forbidden("the session service is read-only")
        return _json({"@odata.type": "#SessionService.v1_1_8.SessionService",
                      "@odata.id": "/redfish/v1/SessionService", "Id": "SessionService",
                      "Name": "Session Service", "ServiceEnabled": True,
                      "SessionTimeout": 1800,
                      "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}})
    if parts == ["Sessions"] and method == "GET":
        # Sessions are tokens (no shared state): the caller sees its own.
        members = ([{"@odata.id": f"/redfish/v1/SessionService/Sessions/{tenant.session.id}"}]
                   if tenant.session else [])
        return _json({"@odata.type": "#SessionCollection.SessionCollection",
                      "@odata.id": "/redfish/v1/SessionService/Sessions",
                      "Name": "Session Collection", "Members@odata.count": len(members),
                      "Members": members})
    if len(parts) == 2 and parts[0] == "Sessions" and tenant.session is not None \
            and parts[1] == tenant.session.id:
        if method == "GET":
            return _json(_session_body(tenant.session))
        if method == "DELETE":
            proxy.end_session(tenant.session.id)
            return Response(status=204)
        raise forbidden("a session can be read or deleted")
    raise missing("/redfish/v1/SessionService/" + "/".join(parts))


def _audit_event(proxy: Proxy, call: Call, body: bytes, status: int,
                 started: float) -> AuditEvent:
    """Who (the credential, its org), what (the route; the node and rack), how
    it ended; a digest of the body, never the body."""
    credential = call.tenant.credential if call.tenant is not None else None
    org_id = call.tenant.rack.org_id if call.tenant is not None else ""
    return AuditEvent(
        event_id="aev_" + os.urandom(10).hex(), time_ms=int(started * 1000),
        request_id="req_" + os.urandom(12).hex(),
        spiffe_id=spiffe_id(proxy.trust_domain, org_id, "redfish", credential["id"])
        if credential is not None and org_id else "",
        org_id=org_id, auth_method="redfish" if credential is not None else "",
        auth_id=credential["id"] if credential is not None else "",
        method=request.method, route=call.route, resources=call.resources, status=status,
        client=request.remote_addr or "",
        # Never a digest of a login: its body is the password.
        body_sha256=hashlib.sha256(body).hexdigest()
        if body and not call.route.endswith("/Sessions") else "",
        level="request" if body else "metadata")
