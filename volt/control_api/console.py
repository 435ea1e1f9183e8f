"""The console: OIDC sign-in for admins, their orgs and keys, and the device
verification page where a signed-in member approves a CLI sign-in.

Plain server-rendered HTML: every page is a few lines, every form carries the
session's CSRF token (and the session cookie is ``SameSite=Lax``). Errors
are an HTML page for a browser and OpenAI's JSON envelope for anything else,
with the same status and message either way.
"""

from __future__ import annotations

import html
import json
import time
from collections import deque
from urllib.parse import quote, urlencode

from quart import Quart, Response, g, request

from volt.control_api.errors import (
    ApiError,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RateLimited,
    error_json,
    translate,
)
from volt.control_api.identity_routes import create_key
from volt.identity import Identity, IdentityError, Principal, Role
from volt.identity.device_flow import display_user_code, normalize_user_code
from volt.identity.oidc import OidcError, local_path, roles_for
from volt.identity.sessions import COOKIE, Session, clearing_cookie_header, cookie_header

DEVICE_ATTEMPTS = 10
DEVICE_WINDOW_S = 300.0


def _page(title: str, body: str, status: int = 200) -> Response:
    text = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title></head><body><h1>" + html.escape(title) + "</h1>" + body +
            "</body></html>")
    return Response(text, status=status, content_type="text/html; charset=utf-8",
                    headers={"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                             "Content-Security-Policy": "default-src 'none'; form-action 'self'"})


CONSOLE_PATHS = ("/console", "/device")


def error_page(error: ApiError) -> Response:
    if "text/html" in request.headers.get("Accept", ""):
        return _page("Volt", f"<p>{html.escape(error.message)}</p>", error.status)
    return Response(error_json(error), status=error.status, content_type="application/json",
                    headers=error.headers())


def redirect(location: str, status: int = 302) -> Response:
    return Response("", status=status, headers={"Location": location})


def _csrf_field(session: Session) -> str:
    return f"<input type='hidden' name='csrf_token' value='{html.escape(session.csrf_token)}'>"


class _Attempts:
    """Failed user-code entries per user: a guessing bound (per replica)."""

    def __init__(self) -> None:
        self._failures: dict[str, deque[float]] = {}

    def allowed(self, user_id: str) -> bool:
        recent = self._failures.setdefault(user_id, deque())
        now = time.monotonic()
        while recent and now - recent[0] > DEVICE_WINDOW_S:
            recent.popleft()
        return len(recent) < DEVICE_ATTEMPTS

    def failed(self, user_id: str) -> None:
        self._failures.setdefault(user_id, deque()).append(time.monotonic())


def register_console(app: Quart, identity: Identity) -> None:
    attempts = _Attempts()

    async def session_or_login() -> Session | Response:
        try:
            session, _ = await identity.session_principal(request.cookies.get(COOKIE))
        except IdentityError:
            target = request.full_path.rstrip("?")
            return redirect(f"/console/login?{urlencode({'return_to': target})}")
        return session

    async def checked_form(session: Session) -> dict[str, str]:
        form = await request.form
        if not session.check_csrf(form.get("csrf_token")):
            raise PermissionDenied("The form's CSRF token is missing or wrong; reload the page.",
                                   code="csrf_failed")
        return {key: form[key] for key in form}

    async def acting_in(session: Session, org_id: str) -> Principal:
        try:
            _, principal = await identity.session_principal(request.cookies.get(COOKIE), org_id)
        except IdentityError as exc:
            translated = translate(exc)
            assert translated is not None
            raise translated from None
        assert principal is not None
        identity.authorize(principal, g.rule, {"org_id": org_id})
        g.principal = principal
        return principal

    @app.errorhandler(OidcError)
    async def oidc_error(error: OidcError) -> Response:
        return error_page(InvalidRequest(f"Sign-in failed: {error}", code="oidc_failed"))

    @app.get("/console/login")
    async def login() -> Response:
        name = request.args.get("issuer") or (
            next(iter(identity.issuers)) if len(identity.issuers) == 1 else "")
        if name not in identity.issuers:
            choices = ", ".join(sorted(identity.issuers)) or "none is configured"
            return error_page(NotFound(f"Choose a sign-in issuer ({choices}).",
                                       code="unknown_issuer"))
        url = await identity.logins.begin(name, request.args.get("return_to", "/console"))
        return redirect(url)

    @app.get("/console/callback")
    async def callback() -> Response:
        issuer, who, return_to = await identity.logins.complete(dict(request.args))
        user_id = await identity.orgs.ensure_user(who.issuer, who.subject, who.email)
        await identity.orgs.sync_oidc_roles(user_id, roles_for(issuer.settings, who.groups))
        session_id = await identity.sessions.create(user_id, issuer.settings.name)
        response = redirect(local_path(return_to))
        response.headers["Set-Cookie"] = cookie_header(session_id)
        return response

    @app.get("/console")
    async def console() -> Response:
        session = await session_or_login()
        if isinstance(session, Response):
            return session
        rows = []
        for membership in await identity.orgs.memberships(session.user_id):
            org = html.escape(membership.org_name)
            keys = ""
            if membership.role.at_least(Role.ADMIN):
                records, _ = await identity.keys.page(membership.org_id, limit=50)
                items = "".join(
                    f"<li>{html.escape(k.name)} <code>{html.escape(k.prefix)}</code> "
                    f"{'revoked' if k.revoked_at else ''}"
                    + ("" if k.revoked_at else
                       f"<form method='post' action='/console/orgs/{quote(membership.org_id)}"
                       f"/api-keys/{quote(k.id)}/revoke'>{_csrf_field(session)}"
                       "<button>Revoke</button></form>") + "</li>"
                    for k in records)
                keys = (f"<ul>{items}</ul><form method='post' action='/console/orgs/"
                        f"{quote(membership.org_id)}/api-keys'>{_csrf_field(session)}"
                        "<input name='name' placeholder='key name' required>"
                        "<button>Create a key</button></form>")
            rows.append(f"<h2>{org} ({membership.role})</h2>{keys}")
        body = "".join(rows) or "<p>You are not a member of any organization yet.</p>"
        body += (f"<form method='post' action='/console/logout'>{_csrf_field(session)}"
                 "<button>Sign out</button></form>")
        return _page("Volt console", body)

    @app.post("/console/logout")
    async def logout() -> Response:
        session = await session_or_login()
        if isinstance(session, Response):
            return session
        await checked_form(session)
        await identity.sessions.end(request.cookies.get(COOKIE, ""))
        response = _page("Signed out", "<p>You are signed out.</p>")
        response.headers["Set-Cookie"] = clearing_cookie_header()
        return response

    @app.post("/console/orgs/<org_id>/api-keys")
    async def console_create_key(org_id: str) -> Response:
        session = await session_or_login()
        if isinstance(session, Response):
            return session
        form = await checked_form(session)
        principal = await acting_in(session, org_id)
        issued = await create_key(identity, principal, json.dumps(
            {"name": form.get("name", "")}).encode())
        return _page("Your new API key", (
            "<p>Copy it now: Volt keeps only a keyed hash and cannot show it again.</p>"
            f"<pre>{html.escape(issued.key)}</pre><p><a href='/console'>Back</a></p>"), 201)

    @app.post("/console/orgs/<org_id>/api-keys/<key_id>/revoke")
    async def console_revoke_key(org_id: str, key_id: str) -> Response:
        session = await session_or_login()
        if isinstance(session, Response):
            return session
        await checked_form(session)
        await acting_in(session, org_id)
        await identity.revoke_key(org_id, key_id)
        return redirect("/console", 303)

    @app.get("/device")
    async def device_page() -> Response:
        session = await session_or_login()
        if isinstance(session, Response):
            return session
        code = request.args.get("user_code", "")
        orgs = [m for m in await identity.orgs.memberships(session.user_id)
                if m.role.at_least(Role.MEMBER)]
        if not orgs:
            return _page("Sign in a device", "<p>You need the member role in an organization "
                         "to approve a device.</p>", 403)
        options = "".join(f"<option value='{html.escape(m.org_id)}'>{html.escape(m.org_name)}"
                          f" ({m.role})</option>" for m in orgs)
        pending = await identity.device.pending(code) if code else None
        about = (f"<p><b>{html.escape(pending.client_id)}</b> asks for "
                 f"<b>{html.escape(' '.join(sorted(pending.scopes)))}</b>.</p>"
                 if pending else "")
        return _page("Sign in a device", (
            f"{about}<form method='post' action='/device'>{_csrf_field(session)}"
            f"<label>Code <input name='user_code' value='{html.escape(code)}' required></label>"
            f"<label>Organization <select name='org_id'>{options}</select></label>"
            "<button name='action' value='approve'>Approve</button>"
            "<button name='action' value='deny'>Deny</button></form>"))

    @app.post("/device")
    async def device_decide() -> Response:
        session = await session_or_login()
        if isinstance(session, Response):
            return session
        form = await checked_form(session)
        if not attempts.allowed(session.user_id):
            raise RateLimited("Too many wrong codes; wait a few minutes.", limit=DEVICE_ATTEMPTS,
                              retry_after_s=int(DEVICE_WINDOW_S))
        code = normalize_user_code(form.get("user_code", ""))
        action = form.get("action", "")
        if action not in {"approve", "deny"}:
            raise InvalidRequest("Choose approve or deny.", param="action")
        if action == "deny":
            decided = await identity.device.deny(code)
        else:
            org_id = form.get("org_id", "")
            await acting_in(session, org_id)
            decided = await identity.device.approve(code, org_id=org_id,
                                                    user_id=session.user_id)
        if not decided:
            attempts.failed(session.user_id)
            raise NotFound("That code is unknown, expired or already used.",
                           code="unknown_user_code")
        word = "approved" if action == "approve" else "denied"
        return _page(f"Device {word}", f"<p>The sign-in with code "
                     f"{html.escape(display_user_code(code))} was {word}. You can close this "
                     "page.</p>")

