"""The OAuth 2.0 endpoints of the device grant (RFC 8628) and refresh tokens.

These two routes speak OAuth, not OpenAI: form-encoded requests, and errors
as RFC 6749 §5.2 has them (``{"error": "authorization_pending",
"error_description": ...}``), because the clients that call them are OAuth
clients (the ``volt`` CLI among them) and parse exactly that. It is the one
deliberate exception to OpenAI's error envelope (README, "Authentication").
"""

from __future__ import annotations

from urllib.parse import urlencode

import msgspec
from quart import Quart, Response, request

from volt.identity import Identity
from volt.identity.device_flow import DEVICE_GRANT_TYPE, OAuthFailure, Tokens
from volt.identity.principal import format_scopes
from volt.protocol.identity import DeviceAuthorization, OAuthError, TokenResponse

_encoder = msgspec.json.Encoder()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _json(value: object, status: int = 200) -> Response:
    return Response(_encoder.encode(value), status=status, content_type="application/json",
                    headers=NO_STORE)


def oauth_error(failure: OAuthFailure) -> Response:
    response = _json(OAuthError(error=failure.error, error_description=failure.description),
                     status=failure.status)
    if failure.status == 401:
        response.headers["WWW-Authenticate"] = 'Basic realm="volt"'
    return response


def _token(tokens: Tokens) -> Response:
    return _json(TokenResponse(access_token=tokens.access_token, token_type="Bearer",
                               expires_in=tokens.expires_in, refresh_token=tokens.refresh_token,
                               scope=format_scopes(tokens.scopes)))


async def _form() -> dict[str, str]:
    if request.mimetype != "application/x-www-form-urlencoded":
        raise OAuthFailure("invalid_request",
                           "Send the parameters as application/x-www-form-urlencoded.")
    form = await request.form
    return {key: form[key] for key in form}


def register_oauth_routes(app: Quart, identity: Identity) -> None:
    verification_uri = identity.config.public_url() + "/device"

    @app.post("/oauth/device/code")
    async def device_code() -> Response:
        try:
            form = await _form()
            start = await identity.device.start(form.get("client_id", ""), form.get("scope"))
        except OAuthFailure as failure:
            return oauth_error(failure)
        return _json(DeviceAuthorization(
            device_code=start.device_code, user_code=start.user_code,
            verification_uri=verification_uri,
            verification_uri_complete=(
                f"{verification_uri}?{urlencode({'user_code': start.user_code})}"),
            expires_in=start.expires_in, interval=start.interval))

    @app.post("/oauth/token")
    async def token() -> Response:
        try:
            form = await _form()
            grant = form.get("grant_type", "")
            client_id = form.get("client_id", "")
            if grant == DEVICE_GRANT_TYPE:
                return _token(await identity.device.poll(client_id, form.get("device_code", "")))
            if grant == "refresh_token":
                return _token(await identity.device.refresh(client_id,
                                                            form.get("refresh_token", "")))
            raise OAuthFailure("unsupported_grant_type",
                               f"Grant type {grant!r} is not supported here; use the device "
                               "code or refresh_token grant.")
        except OAuthFailure as failure:
            return oauth_error(failure)
