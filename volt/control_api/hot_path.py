"""The inference endpoints as a thin ASGI handler in front of the Quart app.

Everything else (models, health, OpenAPI, unknown routes) is Quart's. The
inference endpoints carry almost all of the traffic, and on them Quart's
per-request machinery (request and context objects, two tasks and an
``asyncio.wait`` per request, header normalisation, response finalisation)
cost more than all of Volt's own work. The handler below does what Quart did
for these routes (identity first: authenticate, the route's rule, the key's
limits; body limit, OpenAI errors, cancel on disconnect, one audit event per
request and its ``x-request-id``) and calls the same serving code. README.md, "Why the inference
path skips Quart", has the measurements.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from volt.asgi import (
    SSE_HEADERS,
    ASGIApp,
    BodyTooLarge,
    CancelOnDisconnect,
    Disconnected,
    Receive,
    Scope,
    Send,
    header,
    read_body,
    send_json,
)
from volt.control_api.errors import (
    ApiError,
    InvalidRequest,
    MethodNotAllowed,
    PayloadTooLarge,
    error_json,
    translate,
)
from volt.control_api.serving import JsonReply, StreamReply
from volt.identity import Principal
from volt.identity.audit import new_request_id
from volt.identity.policy import RULES

log = logging.getLogger(__name__)


INFERENCE_PATHS = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/embeddings"})
"""The paths served here (all POST); ``services.endpoints`` has one endpoint each."""


class Endpoint(Protocol):
    async def create(
        self, body: bytes, arrived: float, principal: Principal
    ) -> JsonReply | StreamReply: ...


class HotPath:
    """ASGI app: the inference routes here, everything else to ``app``."""

    ROUTES = frozenset(("post", path) for path in INFERENCE_PATHS)

    def __init__(self, app: ASGIApp, services: Any, *, max_body_bytes: int) -> None:
        self.app = app
        self.services = services
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in INFERENCE_PATHS:
            await self.app(scope, receive, send)
            return
        identity = self.services.identity
        path = scope["path"]
        rule = RULES[("POST", path)]
        arrived = time.perf_counter()
        request_id = new_request_id()
        request_id_header = (b"x-request-id", request_id.encode())
        status = 0

        async def send_tagged(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), request_id_header]
            await send(message)

        principal: Principal | None = None
        body: bytes | None = None
        too_large = PayloadTooLarge(f"The request body is larger than {self.max_body_bytes} bytes.")
        try:
            try:
                if scope["method"] != "POST":
                    raise MethodNotAllowed(f"Method {scope['method']} is not allowed on {path}.",
                                           allow=["POST"])
                authorization = header(scope, b"authorization")
                principal = await identity.authenticate(
                    authorization.decode("latin-1") if authorization is not None else None)
                identity.authorize(principal, rule, {})
                length = header(scope, b"content-length")
                if length is not None:
                    if not length.isdigit():
                        raise InvalidRequest("The Content-Length header is not a number.")
                    if int(length) > self.max_body_bytes:
                        raise too_large
                body = await read_body(receive, self.max_body_bytes)
                await identity.admit(principal)
            except Disconnected:
                status = 499  # the client left before sending its request
                return
            except BodyTooLarge:
                await _send_error(send_tagged, too_large)
                return
            except Exception as exc:
                error = translate(exc)
                if error is None:
                    raise
                await _send_error(send_tagged, error)
                return
            await self._serve(endpoint_of(self.services, path), body, arrived, principal,
                              receive, send_tagged, send)
        finally:
            client = scope.get("client")
            identity.record(request_id=request_id, principal=principal, method="POST",
                            route=path, resources={}, status=status or 499,
                            client=client[0] if client else "", body=body, level=rule.audit)

    async def _serve(self, endpoint: Endpoint, body: bytes, arrived: float,
                     principal: Principal, receive: Receive, send: Send,
                     send_body: Send) -> None:
        """``send`` starts the response (tagging it); a stream's events, once
        per token, go straight to the server's ``send_body``."""
        async with CancelOnDisconnect(receive) as guard:
            reply: JsonReply | StreamReply | None = None
            try:
                reply = await endpoint.create(body, arrived, principal)
                if isinstance(reply, JsonReply):
                    guard.finish()
                    await send_json(send, reply.status, reply.body)
                    return
                await send({"type": "http.response.start", "status": 200,
                            "headers": SSE_HEADERS})
                async for event, last in reply.events:
                    if last:
                        guard.finish()
                    await send_body({"type": "http.response.body", "body": event,
                                     "more_body": not last})
            except ApiError as error:
                guard.finish()
                await _send_error(send, error)
            except Exception:
                log.exception("unhandled error on the inference path")
                guard.finish()
                failure = ApiError("The server had an error processing your request.")
                await _send_error(send, failure)
            finally:
                if isinstance(reply, StreamReply):
                    await reply.close()  # a no-op when the stream ran to its end


def endpoint_of(services: Any, path: str) -> Endpoint:
    endpoint: Endpoint = services.endpoints[path]
    return endpoint


async def _send_error(send: Send, error: ApiError) -> None:
    extra = [(k.lower().encode(), v.encode()) for k, v in error.headers().items()]
    await send_json(send, error.status, error_json(error), extra)
