"""Identity, tenancy and audit: orgs, people and keys, and what they may do.

The API uses one object, ``Identity`` (``service.py``): authenticate a
bearer credential or a console session, check a route's rule (``policy.py``),
enforce per-key limits, record the audit event. Behind it:

* ``principal``: principals, roles, scopes and SPIFFE IDs
* ``api_key_format`` / ``api_keys``: the key format (checksummed, scannable);
  keys in the store
* ``authenticator``: bearer credentials to principals, cached, revoked everywhere at once
* ``access_tokens`` / ``device_flow``: the OAuth device grant (RFC 8628) and its tokens
* ``oidc`` / ``oidc_presets`` / ``sessions``: console sign-in and sessions
* ``orgs``: orgs, users and members
* ``audit`` / ``audit_format`` / ``audit_log`` / ``audit_writer`` / ``merkle`` / ``verify``:
  the tamper-evident audit log
* ``limits``: requests and tokens per minute, shared by every API replica
* ``keyring``: the secrets identity needs, outside the store
"""

from volt.identity.errors import (
    AccessDenied,
    AuthenticationFailed,
    IdentityError,
    InvalidInput,
    NoSuchResource,
)
from volt.identity.principal import AuthMethod, Limits, Principal, Role, Scope
from volt.identity.service import Identity

__all__ = [
    "AccessDenied",
    "AuthMethod",
    "AuthenticationFailed",
    "Identity",
    "IdentityError",
    "InvalidInput",
    "Limits",
    "NoSuchResource",
    "Principal",
    "Role",
    "Scope",
]
