"""Errors the SDK raises, one per kind of API answer.

::

    VoltError
    ├── APIConnectionError        the API could not be reached (or timed out)
    └── APIStatusError            the API answered with an error envelope
        ├── BadRequestError       400
        ├── AuthenticationError   401
        ├── PermissionDeniedError 403
        ├── NotFoundError         404
        ├── ConflictError         409
        ├── RateLimitError        429 (after the SDK's own retries)
        └── ServerError           5xx (503 after the SDK's own retries)

Each carries the envelope's ``message``, ``type``, ``code`` and ``param``, the
HTTP ``status`` and the response's ``request_id`` (quote it to support).
"""

from __future__ import annotations

from typing import Any


class VoltError(Exception):
    pass


class APIConnectionError(VoltError):
    pass


class APIStatusError(VoltError):
    status = 0

    def __init__(self, message: str, *, status: int, type: str | None = None,
                 code: str | None = None, param: str | None = None,
                 request_id: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.request_id = request_id
        self.headers = headers or {}


class BadRequestError(APIStatusError):
    pass


class AuthenticationError(APIStatusError):
    pass


class PermissionDeniedError(APIStatusError):
    pass


class NotFoundError(APIStatusError):
    pass


class ConflictError(APIStatusError):
    pass


class RateLimitError(APIStatusError):
    pass


class ServerError(APIStatusError):
    pass


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError, 401: AuthenticationError, 403: PermissionDeniedError,
    404: NotFoundError, 409: ConflictError, 429: RateLimitError,
}


def error_for(status: int, body: Any, headers: dict[str, str]) -> APIStatusError:
    """The typed error for an error response (OpenAI's envelope, or OAuth's)."""
    detail: dict[str, Any] = {}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"]
    elif isinstance(body, dict) and isinstance(body.get("error"), str):  # OAuth (RFC 6749)
        detail = {"message": body.get("error_description", body["error"]),
                  "code": body["error"], "type": "oauth_error"}
    kind = _BY_STATUS.get(status) or (ServerError if status >= 500 else APIStatusError)
    return kind(str(detail.get("message") or f"HTTP {status}"), status=status,
                type=detail.get("type"), code=detail.get("code"), param=detail.get("param"),
                request_id=headers.get("x-request-id"), headers=headers)
