"""The console through the API with a real OpenID Provider: sign in, land with
the roles the group claim maps to, manage keys through CSRF-protected forms,
sign out."""

from __future__ import annotations

import contextlib
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.oidc import OidcProvider, User, login
from support.requirements import require

from volt.testing import Cluster
from volt.up.nats_server import free_port


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory,
            tiny_model: Path) -> Iterator[tuple[Cluster, OidcProvider]]:
    if shutil.which("npm") is None:
        require("npm is needed to install oidc-provider")
    root = tmp_path_factory.mktemp("console")
    api_port = free_port()
    callback = f"http://127.0.0.1:{api_port}/console/callback"
    provider = OidcProvider(root, [{
        "client_id": "volt-console", "client_secret": "console-secret",
        "redirect_uris": [callback], "grant_types": ["authorization_code"],
        "response_types": ["code"]}],
        {"alice": User("correct horse", "alice@example.com", ["acme-admins"]),
         "bob": User("battery staple", "bob@example.com", ["acme-viewers"])})
    with provider:
        config = root / "volt.toml"
        config.write_text(f"""
[[identity.oidc]]
name = "test"
issuer = "{provider.issuer}"
client_id = "volt-console"
client_secret = "console-secret"
role_map = {{ "acme-admins" = "acme:admin", "acme-viewers" = "acme:viewer" }}
""")
        with Cluster(root / "cluster", engine_mode="instant", model_cache=tiny_model,
                     extra_env={"VOLT_CONFIG": str(config)}, api_port=api_port) as cluster:
            cluster.add_agent("fra-1", metro="fra")
            cluster.start_api()
            cluster.wait_routable()
            yield cluster, provider


def sign_in(cluster: Cluster, user: str, password: str) -> tuple[httpx.Client, str]:
    """A browser signed in to the console: (client carrying the session, cookie header)."""
    browser = httpx.Client(base_url=f"http://127.0.0.1:{cluster.api_port}", timeout=30,
                           follow_redirects=False)
    start = browser.get("/console/login", params={"return_to": "/console"})
    assert start.status_code == 302
    back = login(start.headers["location"], user, password)
    done = browser.get(back)
    assert done.status_code == 302, done.text
    assert done.headers["location"] == "/console"
    set_cookie = done.headers["set-cookie"]
    for flag in ("HttpOnly", "Secure", "SameSite=Lax"):
        assert flag in set_cookie
    session = set_cookie.split(";")[0]
    return browser, session


def test_an_admin_signs_in_and_manages_keys_with_csrf(console: tuple[Cluster, OidcProvider]
                                                      ) -> None:
    cluster, _ = console
    browser, session = sign_in(cluster, "alice", "correct horse")
    with contextlib.closing(browser):
        page = browser.get("/console", headers={"Cookie": session})
        assert page.status_code == 200
        assert "acme (admin)" in page.text
        org_id = re.search(r"/console/orgs/([^/]+)/api-keys", page.text)[1]  # type: ignore[index]
        csrf = re.search(r"name='csrf_token' value='([^']+)'", page.text)[1]  # type: ignore[index]

        forged = browser.post(f"/console/orgs/{org_id}/api-keys", data={"name": "no-csrf"},
                              headers={"Cookie": session, "Accept": "text/html"})
        assert forged.status_code == 403
        made = browser.post(f"/console/orgs/{org_id}/api-keys",
                            data={"name": "from-console", "csrf_token": csrf},
                            headers={"Cookie": session})
        assert made.status_code == 201
        key = re.search(r"(volt_sk_live_\w+)", made.text)[1]  # type: ignore[index]
        assert cluster.request("/v1/me", key=key)[0] == 200

        out = browser.post("/console/logout", data={"csrf_token": csrf},
                           headers={"Cookie": session})
        assert out.status_code == 200
        assert "Max-Age=0" in out.headers["set-cookie"]
        after = browser.get("/console", headers={"Cookie": session})
        assert after.status_code == 302  # the session is gone server-side


def test_a_viewer_sees_no_keys_and_cannot_create_one(console: tuple[Cluster, OidcProvider]
                                                     ) -> None:
    cluster, _ = console
    browser, session = sign_in(cluster, "bob", "battery staple")
    with contextlib.closing(browser):
        page = browser.get("/console", headers={"Cookie": session})
        assert "acme (viewer)" in page.text
        assert "Create a key" not in page.text
        csrf = re.search(r"name='csrf_token' value='([^']+)'", page.text)[1]  # type: ignore[index]
        org_id = cluster.org_id("acme")
        refused = browser.post(f"/console/orgs/{org_id}/api-keys",
                               data={"name": "nope", "csrf_token": csrf},
                               headers={"Cookie": session})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "insufficient_role"


def test_no_session_means_sign_in_first(console: tuple[Cluster, OidcProvider]) -> None:
    cluster, _ = console
    with httpx.Client(base_url=f"http://127.0.0.1:{cluster.api_port}") as browser:
        response = browser.get("/device", params={"user_code": "BCDF-GHJK"})
        assert response.status_code == 302
        assert response.headers["location"].startswith("/console/login?return_to=")
        forged = browser.get("/console", headers={"Cookie": "volt_session=made-up"})
        assert forged.status_code == 302
