"""Volt's Python SDK: the typed client for every route that is not OpenAI's.

Spark (chat, completions, embeddings) stays on the official ``openai``
client; point it at Volt with ``base_url`` and a key (or a ``volt login``
token, ``Tokens.access_token``).
"""

from volt.sdk._client import AsyncClient, Client
from volt.sdk._credentials import Tokens, load_tokens
from volt.sdk._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    ConflictError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    ServerError,
    VoltError,
)
from volt.sdk.login import LoginFailed, device_login

__all__ = [
    "APIConnectionError",
    "APIStatusError",
    "AsyncClient",
    "AuthenticationError",
    "BadRequestError",
    "Client",
    "ConflictError",
    "LoginFailed",
    "NotFoundError",
    "PermissionDeniedError",
    "RateLimitError",
    "ServerError",
    "Tokens",
    "VoltError",
    "device_login",
    "load_tokens",
]
