"""Identity's errors; the API maps them to HTTP once (``control_api/errors.py``).

::

    IdentityError
    ├── AuthenticationFailed   401  no credential, a malformed, unknown, expired
    │                               or revoked one
    ├── AccessDenied           403  a credential without the scope or role the route needs
    ├── NoSuchResource         404  unknown, or another org's (never 403: a caller
    │                               must not learn that another org's id exists)
    └── InvalidInput           400  a bad field, with ``param``
"""

from __future__ import annotations


class IdentityError(Exception):
    status = 500
    code = "identity_error"

    def __init__(self, message: str, *, code: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code


class AuthenticationFailed(IdentityError):
    status = 401
    code = "invalid_api_key"


class AccessDenied(IdentityError):
    status = 403
    code = "insufficient_permissions"


class NoSuchResource(IdentityError):
    status = 404
    code = "not_found"


class InvalidInput(IdentityError):
    status = 400
    code = "invalid_value"
