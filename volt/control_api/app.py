"""The Quart application: identity → handler → audit, OpenAI errors on every path.

``create_app`` wires the pieces; the logic lives in ``chat`` (serving),
``routing`` (placement from the scheduler's view), ``inference`` (NATS
request/reply) and ``volt.identity`` (who may do what, and the audit log).
Every request passes one pipeline: ``before_request`` finds the route's rule
(``volt/identity/policy.py``), authenticates a bearer credential and checks
scope, role and org; ``after_request`` records the audit event and sets
``x-request-id``. Routes here stay thin; the identity routes are in
``identity_routes``, ``oauth`` and ``console``. ``create_asgi`` puts the
inference hot path (``hot_path``) in front of the Quart app; that is what
the ASGI server serves.
"""

from __future__ import annotations

import contextlib
import logging
import re
import secrets
from importlib.metadata import version as package_version

import msgspec
from nats.aio.client import Client
from prometheus_client import REGISTRY, generate_latest
from quart import Quart, Response, g, request
from werkzeug.exceptions import HTTPException

from volt.asgi import ASGIApp
from volt.config import ConfigError, VoltConfig
from volt.control_api.admission import Admission
from volt.control_api.chat import ChatCompletions
from volt.control_api.completions import TextCompletions
from volt.control_api.console import CONSOLE_PATHS, error_page, register_console
from volt.control_api.embeddings import Embeddings
from volt.control_api.errors import (
    ApiError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    error_json,
    translate,
)
from volt.control_api.files import finetune_commands, register_file_routes
from volt.control_api.fine_tuning import register_fine_tuning_routes
from volt.control_api.forge import register_forge_routes
from volt.control_api.hot_path import Endpoint, HotPath
from volt.control_api.identity_routes import register_identity_routes
from volt.control_api.inference import InferenceClient
from volt.control_api.oauth import register_oauth_routes
from volt.control_api.openapi import render_yaml
from volt.control_api.routing import Router
from volt.control_api.serving import Dispatcher
from volt.control_api.usage import usage_report
from volt.control_api.vault import register_vault_routes
from volt.finetune import model_ids
from volt.finetune.blobs import Blobs, BlobUnavailable, data_key
from volt.identity import Identity, IdentityError, Principal
from volt.identity.audit import AuditUnavailable, new_request_id
from volt.identity.bus_credentials import BusCredentials, bus_credentials
from volt.identity.policy import AuditLevel, Rule, rule_for
from volt.placement import routing_policy
from volt.protocol.common import Model, ModelDeleted, ModelList, ModelVolt
from volt.store import Database, UsageLedger
from volt.store.resources import ResourceStore
from volt.wire import ModelCard, ModelDelete, ModelsDeleted, NodeView, bus, permissions

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
MAX_BODY_BYTES = 16 * 1024 * 1024


def _model(card: ModelCard, nodes: list[NodeView]) -> Model:
    # Only pods that can take the request count: a drained node serves nobody.
    # A tuned model is served by its base model's pods in its metro.
    served = card.base or card.id
    serving = [node for node in nodes
               if node.state == "ready" and not node.lease_id and served in node.models
               and (not card.metro or node.metro == card.metro)]
    insecure = any(node.seal == "insecure" for node in serving)
    not_attested = any(node.attestation != "attested" for node in serving)
    return Model(id=card.id, created=card.created, owned_by=card.owned_by, object="model",
                 volt=ModelVolt(insecure=insecure, not_attested=not_attested)
                 if insecure or not_attested else None)


def _json(value: object, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status=status, content_type="application/json")


def error_response(error: ApiError) -> Response:
    return Response(error_json(error), status=error.status, headers=error.headers(),
                    content_type="application/json")


class ApiServices:
    """What the routes use, connected in ``before_serving``."""

    def __init__(self, config: VoltConfig, replica_id: str,
                 credentials: BusCredentials | None = None) -> None:
        self.credentials = credentials or BusCredentials(None)
        self.config = config
        self.replica_id = replica_id
        self.db = Database(config.store_url())
        self.identity = Identity(config, self.db)
        self.usage = UsageLedger(self.db)
        self.router = Router(routing_policy(config.api.routing),
                             max_inflight_per_pod=config.api.max_inflight_per_pod,
                             replica_id=replica_id)
        self.nc: Client | None = None
        self.blobs: Blobs | None = None
        """Training files in their metros' object stores (sealed)."""
        self.endpoints: dict[str, Endpoint] = {}
        """Path -> the inference endpoint serving it (see ``hot_path``)."""

    async def start(self) -> None:
        await self.db.check_current()
        self.nc = await bus.connect(
            self.config.nats.url, name=f"volt-api-{self.replica_id}",
            on_reconnect=self.router.refresh, tls=self.credentials.tls(),
            inbox_prefix=permissions.inbox_for("api", self.replica_id),
        )
        self.blobs = Blobs(self.nc, data_key(self.config))
        inference = InferenceClient(self.nc, self.replica_id)
        await inference.start()
        self.router.on_pods_lost = inference.pods_lost
        await self.router.attach(self.nc)
        await self.identity.start(self.nc)
        dispatcher = Dispatcher(
            self.router, inference, self.config.api.request_timeout_s,
            Admission(queue_limit=self.config.api.queue_limit,
                      per_tenant_limit=self.config.api.tenant_queue_limit),
            on_usage=self.identity.charge,
        )
        self.endpoints = {
            "/v1/chat/completions": ChatCompletions(dispatcher),
            "/v1/completions": TextCompletions(dispatcher),
            "/v1/embeddings": Embeddings(dispatcher),
        }

    async def stop(self) -> None:
        await self.identity.stop()  # publishes the audit events still buffered
        if self.nc is not None:
            # Drain when we can (finish in-flight replies); when NATS is
            # already gone (a whole-host shutdown), just close.
            try:
                await self.nc.drain()
            except Exception:
                with contextlib.suppress(Exception):
                    await self.nc.close()
        self.credentials.close()
        await self.db.close()


def create_app(config: VoltConfig, *, replica_id: str | None = None) -> Quart:
    app = Quart("volt")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        RESPONSE_TIMEOUT=None,  # streams end by our deadline, not Quart's 60 s
        BODY_TIMEOUT=60,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    credentials = bus_credentials(config, "api", name=config.api.replica_id)
    identity = credentials.identity
    if identity is not None:
        # On the secured bus the replica is who its certificate says.
        if config.api.replica_id and config.api.replica_id != identity.name:
            raise ConfigError(f"api.replica_id is {config.api.replica_id}, but the bus SVID "
                              f"is replica {identity.name}")
        replica_id = identity.name
    replica_id = replica_id or config.api.replica_id or "api-" + secrets.token_hex(4)
    services = ApiServices(config, replica_id, credentials)
    app.extensions["volt"] = services
    openapi_yaml = render_yaml(package_version("volt"))

    @app.before_serving
    async def connect() -> None:
        await services.start()

    @app.after_serving
    async def disconnect() -> None:
        await services.stop()

    @app.before_request
    async def identify() -> None:
        """Every request: an id, its route's rule, and for bearer routes the
        caller, checked against the rule (401/403, or 404 for another org's id)."""
        g.request_id = new_request_id()
        g.principal = None
        rule_obj = request.url_rule
        g.route = template(rule_obj.rule) if rule_obj is not None else ""
        g.rule = rule_for(request.method, g.route) if rule_obj is not None else None
        if g.rule is None:
            return  # unknown route or method: the 404/405 handlers answer
        if g.rule.auth == "bearer":
            g.principal = await services.identity.authenticate(
                request.headers.get("Authorization"))
            services.identity.authorize(g.principal, g.rule, request.view_args or {})

    @app.after_request
    async def audit(response: Response) -> Response:
        response.headers["x-request-id"] = g.get("request_id", "")
        rule: Rule | None = g.get("rule")
        level = rule.audit if rule is not None else AuditLevel.METADATA
        body = await request.get_data() if level is AuditLevel.REQUEST else None
        services.identity.record(
            request_id=g.get("request_id", ""), principal=g.get("principal"),
            method=request.method, route=g.get("route", ""),
            resources={k: str(v) for k, v in (request.view_args or {}).items()},
            status=response.status_code, client=request.remote_addr or "",
            body=body if isinstance(body, bytes) else None, level=level)
        return response

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        if request.path.startswith(CONSOLE_PATHS):
            return error_page(error)  # a browser gets a page, anything else JSON
        return error_response(error)

    @app.errorhandler(IdentityError)
    @app.errorhandler(AuditUnavailable)
    @app.errorhandler(BlobUnavailable)
    async def translated_error(error: Exception) -> Response:
        translated = translate(error)
        assert translated is not None
        return await api_error(translated)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if error.code == 405:
            return error_response(MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.path}.",
                allow=getattr(error, "valid_methods", None) or ()))
        if error.code == 413:
            return error_response(PayloadTooLarge(
                f"The request body is larger than {MAX_BODY_BYTES} bytes."
            ))
        if error.code == 404:
            return error_response(NotFound(
                f"Unknown request URL: {request.method} {request.path}.", code="unknown_url"
            ))
        api = ApiError(error.description or "HTTP error")
        api.status = error.code or 500
        api.type = "invalid_request_error" if api.status < 500 else "server_error"
        return error_response(api)

    @app.errorhandler(Exception)
    async def unexpected(error: Exception) -> Response:
        log.error("unhandled error", exc_info=error, extra={"path": request.path})
        return error_response(ApiError("The server had an error processing your request."))

    def visible(card: ModelCard, principal: Principal) -> bool:
        """Base models in the org's catalog, and the org's own tuned models of them."""
        if card.org_id:
            return card.org_id == principal.org_id and principal.catalog.allows_model(card.base)
        return principal.catalog.allows_model(card.id)

    @app.get("/v1/models")
    async def list_models() -> Response:
        principal: Principal = g.principal
        cards = [card for card in services.router.catalog.values() if visible(card, principal)]
        nodes = services.router.nodes
        return _json(ModelList(data=[_model(card, nodes) for card in cards]))

    @app.get("/v1/models/<path:model_id>")
    async def retrieve_model(model_id: str) -> Response:
        principal: Principal = g.principal
        card = services.router.catalog.get(model_id)
        if card is None or not visible(card, principal):
            raise ModelNotFound(model_id)
        return _json(_model(card, services.router.nodes))

    @app.delete("/v1/models/<path:model_id>")
    async def delete_model(model_id: str) -> Response:
        """A tuned model of the org, for good (OpenAI's ``deleteModel``): the
        job's model with its checkpoints, or one checkpoint."""
        principal: Principal = g.principal
        if model_ids.parse(model_id) is None:
            card = services.router.catalog.get(model_id)
            if card is None or not visible(card, principal):
                raise ModelNotFound(model_id)
            raise PermissionDenied(f"`{model_id}` is a base model: only your organization's "
                                   "fine-tuned models can be deleted.", param="model",
                                   code="model_not_deletable")
        answer = await finetune_commands(services).ask(ModelDelete(
            org_id=principal.org_id, model_id=model_id))
        assert isinstance(answer, ModelsDeleted)
        services.router.forget_models(answer.model_ids)
        return _json(ModelDeleted(id=model_id, deleted=True, object="model"))

    @app.get("/v1/usage")
    async def usage() -> Response:
        body = await usage_report(services.usage, ResourceStore(services.db), g.principal,
                                  request.args)
        return Response(body, content_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", content_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        nc = services.nc
        if nc is None or not nc.is_connected:
            return Response("not connected to NATS", status=503, content_type="text/plain")
        if not services.router.has_view:
            return Response("no placement view yet", status=503, content_type="text/plain")
        return Response("ok", content_type="text/plain")

    @app.get("/openapi.yaml")
    async def openapi() -> Response:
        return Response(openapi_yaml, content_type="application/yaml")

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(REGISTRY), content_type="text/plain; version=0.0.4")

    register_identity_routes(app, services.identity)
    register_forge_routes(app, services)
    register_vault_routes(app, services)
    register_file_routes(app, services)
    register_fine_tuning_routes(app, services)
    register_oauth_routes(app, services.identity)
    register_console(app, services.identity)
    return app


_PARAMETER = re.compile(r"<(?:[^:<>]+:)?([^<>]+)>")


def template(rule: str) -> str:
    """Quart's ``/v1/models/<path:model_id>`` as OpenAPI's ``/v1/models/{model_id}``."""
    return _PARAMETER.sub(r"{\1}", rule)


def create_asgi(config: VoltConfig, *, replica_id: str | None = None) -> ASGIApp:
    """What Hypercorn serves: the inference hot path in front of the Quart app."""
    app = create_app(config, replica_id=replica_id)
    return HotPath(app, app.extensions["volt"], max_body_bytes=MAX_BODY_BYTES)
