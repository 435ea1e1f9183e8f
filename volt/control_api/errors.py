"""Errors on the HTTP surface, each knowing its status and OpenAI ``type``/``code``.

::

    ApiError
    ├── InvalidRequest       400 invalid_request_error   (bad JSON, bad field)
    ├── Unauthenticated      401 authentication_error    (missing or bad key)
    ├── PermissionDenied     403 permission_error        (outside the tenant's catalog)
    ├── NotFound             404 invalid_request_error   (unknown model, route)
    ├── MethodNotAllowed     405 invalid_request_error
    ├── PayloadTooLarge      413 invalid_request_error
    ├── RateLimited          429 requests                (admission.py: queue full)
    ├── KeyRateLimited       429 requests                (a key's requests/tokens per minute)
    ├── NotImplementedYet    501 not_implemented         (a documented endpoint not built yet)
    ├── UpstreamError        4xx/5xx from the pod, passed through (e.g. context length)
    ├── Refused              4xx/503 from the scheduler (a Forge command it refused)
    ├── ServiceUnavailable   503 service_unavailable     (no healthy pod; Retry-After)
    └── DeadlineExceeded     504 timeout

Handlers raise these; ``ApiError.encode`` is the only place they become bytes.
Errors of the packages behind the API (identity's ``IdentityError``, its
``LimitExceeded`` and ``AuditUnavailable``) are translated here, once, by
``translate``.
Anything else that escapes a handler is a bug: it becomes a 500 with a
generic message, and is logged without the request's payload.
"""

from __future__ import annotations

from collections.abc import Iterable

import msgspec

from volt.finetune.blobs import BlobUnavailable
from volt.identity.audit import AuditUnavailable
from volt.identity.errors import IdentityError
from volt.identity.limits import LimitExceeded, LimitState, limit_headers
from volt.protocol.common import ErrorDetail, ErrorResponse

_encoder = msgspec.json.Encoder()


class ApiError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> ErrorResponse:
        return ErrorResponse(error=ErrorDetail(
            message=self.message, type=self.type, param=self.param, code=self.code
        ))


class InvalidRequest(ApiError):
    status = 400
    type = "invalid_request_error"


class Unauthenticated(ApiError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="volt"'}


class PermissionDenied(ApiError):
    status = 403
    type = "permission_error"


class NotFound(ApiError):
    status = 404
    type = "invalid_request_error"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str) -> None:
        super().__init__(
            f"The model `{model}` does not exist or you do not have access to it.",
            param="model",
        )


class MethodNotAllowed(ApiError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"

    def __init__(self, message: str, *, allow: Iterable[str]) -> None:
        super().__init__(message)
        self.allow = sorted(set(allow))

    def headers(self) -> dict[str, str]:
        return {"Allow": ", ".join(self.allow)}  # RFC 9110 §15.5.6: a 405 must say


class PayloadTooLarge(ApiError):
    status = 413
    type = "invalid_request_error"
    code = "payload_too_large"


class NotImplementedYet(ApiError):
    status = 501
    type = "not_implemented"
    code = "not_implemented"


class UpstreamError(ApiError):
    """The pod refused or failed the request; its status and code pass through."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message, code=code)
        self.status = status
        self.type = "invalid_request_error" if 400 <= status < 500 else "server_error"


class Refused(ApiError):
    """The scheduler refused a command (capacity, quota, state); its status
    and code pass through. A 503 (no capacity now) says when to look again."""

    _TYPES = {400: "invalid_request_error", 401: "authentication_error",
              403: "permission_error", 404: "invalid_request_error",
              409: "invalid_request_error", 503: "service_unavailable"}

    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)
        self.status = status
        self.type = self._TYPES.get(status, "server_error")

    def headers(self) -> dict[str, str]:
        return {"Retry-After": "30"} if self.status == 503 else {}


class ServiceUnavailable(ApiError):
    status = 503
    type = "service_unavailable"
    code = "no_healthy_pod"

    def __init__(self, message: str, *, retry_after_s: int = 2) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_s)}


class DeadlineExceeded(ApiError):
    status = 504
    type = "timeout"
    code = "deadline_exceeded"


class RateLimited(ApiError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, *, limit: int, retry_after_s: int = 1) -> None:
        super().__init__(message)
        self.limit = limit
        self.retry_after_s = retry_after_s

    def headers(self) -> dict[str, str]:
        return {
            "Retry-After": str(self.retry_after_s),
            "x-ratelimit-limit-requests": str(self.limit),
            "x-ratelimit-remaining-requests": "0",
            "x-ratelimit-reset-requests": f"{self.retry_after_s}s",
        }


class KeyRateLimited(ApiError):
    """A key's own limit (``volt/identity/limits.py``), shared by every replica."""

    status = 429
    type = "requests"
    code = "rate_limit_exceeded"

    def __init__(self, message: str, states: list[LimitState]) -> None:
        super().__init__(message)
        self.states = states

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(s.reset_s for s in self.states)),
                **limit_headers(self.states)}


def translate(exc: Exception) -> ApiError | None:
    """The API's error for an exception of a package behind it (None: not one)."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, IdentityError):
        error: ApiError = {401: Unauthenticated, 403: PermissionDenied, 404: NotFound}.get(
            exc.status, InvalidRequest)(exc.message, param=exc.param, code=exc.code)
        return error
    if isinstance(exc, LimitExceeded):
        return KeyRateLimited(str(exc), [exc.state])
    if isinstance(exc, AuditUnavailable):
        unavailable = ServiceUnavailable("The audit log cannot be reached, and Volt serves no "
                                         "request it cannot audit; retry shortly.")
        unavailable.code = "audit_unavailable"
        return unavailable
    if isinstance(exc, BlobUnavailable):  # training data's metro-local store
        return ServiceUnavailable(f"{exc}; nothing was changed. Try again shortly.",
                                  retry_after_s=5)
    return None


def error_json(error: ApiError) -> bytes:
    return _encoder.encode(error.body())


def error_event(error: ApiError) -> bytes:
    """The same error as an SSE event, for a stream that already started."""
    return b"data: " + error_json(error) + b"\n\n"
