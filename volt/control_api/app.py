"""The Quart application: auth → handler, OpenAI errors on every path.

``create_app`` wires the pieces; the logic lives in ``chat`` (serving),
``routing`` (placement from the scheduler's view), ``inference`` (NATS
request/reply) and ``auth``. Routes here stay thin. ``create_asgi`` puts the
inference hot path (``hot_path``) in front of the Quart app; that is what
Hypercorn serves.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
from importlib.metadata import version as package_version

import msgspec
from nats.aio.client import Client
from prometheus_client import REGISTRY, generate_latest
from quart import Quart, Response, request
from werkzeug.exceptions import HTTPException

from volt.asgi import ASGIApp
from volt.config import VoltConfig
from volt.control_api.admission import Admission
from volt.control_api.auth import Authenticator
from volt.control_api.chat import ChatCompletions
from volt.control_api.completions import TextCompletions
from volt.control_api.embeddings import Embeddings
from volt.control_api.errors import (
    ApiError,
    MethodNotAllowed,
    ModelNotFound,
    NotFound,
    NotImplementedYet,
    PayloadTooLarge,
    error_json,
)
from volt.control_api.hot_path import Endpoint, HotPath
from volt.control_api.inference import InferenceClient
from volt.control_api.openapi import render_yaml
from volt.control_api.routing import Router
from volt.control_api.serving import Dispatcher
from volt.control_api.usage import usage_report
from volt.protocol.common import Model, ModelList
from volt.store import ApiKeys, Database, UsageLedger
from volt.wire import ModelCard, bus

log = logging.getLogger(__name__)
_encoder = msgspec.json.Encoder()
MAX_BODY_BYTES = 16 * 1024 * 1024


def _model(card: ModelCard) -> Model:
    return Model(id=card.id, created=card.created, owned_by=card.owned_by)


def _json(value: object, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status=status, content_type="application/json")


def error_response(error: ApiError) -> Response:
    return Response(error_json(error), status=error.status, headers=error.headers(),
                    content_type="application/json")


class ApiServices:
    """What the routes use, connected in ``before_serving``."""

    def __init__(self, config: VoltConfig, replica_id: str) -> None:
        self.config = config
        self.replica_id = replica_id
        self.db = Database(config.store_url())
        self.auth = Authenticator(ApiKeys(self.db), ttl_s=config.api.auth_cache_s)
        self.usage = UsageLedger(self.db)
        self.router = Router(max_inflight_per_pod=config.api.max_inflight_per_pod,
                             replica_id=replica_id)
        self.nc: Client | None = None
        self.endpoints: dict[str, Endpoint] = {}
        """Path -> the inference endpoint serving it (see ``hot_path``)."""

    async def start(self) -> None:
        await self.db.check_current()
        self.nc = await bus.connect(
            self.config.nats.url, name=f"volt-api-{self.replica_id}",
            on_reconnect=self.router.refresh,
        )
        inference = InferenceClient(self.nc, self.replica_id)
        await inference.start()
        self.router.on_pods_lost = inference.pods_lost
        await self.router.attach(self.nc)
        dispatcher = Dispatcher(
            self.router, inference, self.config.api.request_timeout_s,
            Admission(queue_limit=self.config.api.queue_limit,
                      per_tenant_limit=self.config.api.tenant_queue_limit),
        )
        self.endpoints = {
            "/v1/chat/completions": ChatCompletions(dispatcher),
            "/v1/completions": TextCompletions(dispatcher),
            "/v1/embeddings": Embeddings(dispatcher),
        }

    async def stop(self) -> None:
        if self.nc is not None:
            # Drain when we can (finish in-flight replies); when NATS is
            # already gone (a whole-host shutdown), just close.
            try:
                await self.nc.drain()
            except Exception:
                with contextlib.suppress(Exception):
                    await self.nc.close()
        await self.db.close()


def create_app(config: VoltConfig, *, replica_id: str | None = None) -> Quart:
    app = Quart("volt")
    app.config.update(
        MAX_CONTENT_LENGTH=MAX_BODY_BYTES,
        RESPONSE_TIMEOUT=None,  # streams end by our deadline, not Quart's 60 s
        BODY_TIMEOUT=60,
        PROVIDE_AUTOMATIC_OPTIONS=False,
    )
    replica_id = replica_id or config.api.replica_id or "api-" + secrets.token_hex(4)
    services = ApiServices(config, replica_id)
    app.extensions["volt"] = services
    openapi_yaml = render_yaml(package_version("volt"))

    @app.before_serving
    async def connect() -> None:
        await services.start()

    @app.after_serving
    async def disconnect() -> None:
        await services.stop()

    @app.errorhandler(ApiError)
    async def api_error(error: ApiError) -> Response:
        return error_response(error)

    @app.errorhandler(HTTPException)
    async def http_error(error: HTTPException) -> Response:
        if error.code == 405:
            return error_response(MethodNotAllowed(
                f"Method {request.method} is not allowed on {request.path}."
            ))
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

    @app.get("/v1/models")
    async def list_models() -> Response:
        principal = await services.auth.authenticate(request.headers.get("Authorization"))
        allowed = principal.catalog.allows_model
        cards = [card for card in services.router.catalog.values() if allowed(card.id)]
        return _json(ModelList(data=[_model(card) for card in cards]))

    @app.get("/v1/models/<path:model_id>")
    async def retrieve_model(model_id: str) -> Response:
        principal = await services.auth.authenticate(request.headers.get("Authorization"))
        if not principal.catalog.allows_model(model_id):
            raise ModelNotFound(model_id)
        return _json(_model(services.router.model(model_id)))

    # Volt's reference spells it fine-tuning; OpenAI's clients call fine_tuning.
    @app.route("/v1/fine-tuning/jobs", methods=["GET", "POST"])
    @app.route("/v1/fine_tuning/jobs", methods=["GET", "POST"])
    @app.get("/v1/fine-tuning/jobs/<job_id>")
    @app.get("/v1/fine_tuning/jobs/<job_id>")
    async def fine_tuning(job_id: str | None = None) -> Response:
        await services.auth.authenticate(request.headers.get("Authorization"))
        raise NotImplementedYet(
            "Fine-tuning is not available yet: LoRA fine-tune jobs are coming in a later "
            "release of Volt. Nothing was submitted."
        )

    @app.get("/v1/usage")
    async def usage() -> Response:
        principal = await services.auth.authenticate(request.headers.get("Authorization"))
        body = await usage_report(services.usage, principal, request.args)
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

    return app


def create_asgi(config: VoltConfig, *, replica_id: str | None = None) -> ASGIApp:
    """What Hypercorn serves: the inference hot path in front of the Quart app."""
    app = create_app(config, replica_id=replica_id)
    return HotPath(app, app.extensions["volt"], max_body_bytes=MAX_BODY_BYTES)
