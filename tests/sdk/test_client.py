"""The SDK's own behaviour, on a scripted transport: retries that honour
Retry-After, typed errors from both error envelopes, and refreshing saved
tokens (rotating the refresh token on disk)."""

from __future__ import annotations

import stat
import time
from pathlib import Path

import httpx
import pytest

from volt.sdk import BadRequestError, Client, NotFoundError, RateLimitError
from volt.sdk import _client as client_module
from volt.sdk._credentials import Tokens, load_tokens, save_tokens

ME = {"spiffe_id": "spiffe://volt.local/org/org_1/key/key_1", "org_id": "org_1",
      "org_name": "acme", "role": "owner", "scopes": ["read", "write"],
      "auth_method": "api_key", "credential_id": "key_1", "mode": "live",
      "object": "principal"}


def envelope(status: int, code: str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers={"x-request-id": "req_1", **(headers or {})},
                          json={"error": {"message": code, "type": "x", "param": None,
                                          "code": code}})


def test_429_and_503_are_retried_after_what_retry_after_says(
        monkeypatch: pytest.MonkeyPatch) -> None:
    answers = [envelope(429, "rate_limit_exceeded", {"Retry-After": "7"}),
               envelope(503, "no_healthy_pod", {"Retry-After": "2"}),
               httpx.Response(200, json=ME)]
    waits: list[float] = []
    monkeypatch.setattr(client_module.time, "sleep", waits.append)
    transport = httpx.MockTransport(lambda request: answers.pop(0))
    with Client("http://volt.test/v1", api_key="volt_sk_live_x", max_retries=2,
                http=httpx.Client(transport=transport)) as volt:
        assert volt.me().org_name == "acme"
    assert waits == [7.0, 2.0]


def test_errors_are_typed_and_carry_the_request_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(client_module.time, "sleep", lambda s: None)
    answers = {"/v1/me": envelope(404, "not_found"),
               "/v1/orgs/org_1/api-keys": envelope(429, "rate_limit_exceeded")}
    transport = httpx.MockTransport(lambda request: answers[request.url.path])
    with Client("http://volt.test", api_key="volt_sk_live_x", max_retries=1,
                http=httpx.Client(transport=transport)) as volt:
        with pytest.raises(NotFoundError) as missing:
            volt.me()
        assert missing.value.request_id == "req_1"
        with pytest.raises(RateLimitError):
            volt.keys.list(org_id="org_1")


def test_expired_saved_tokens_are_refreshed_and_the_new_refresh_token_saved(
        tmp_path: Path) -> None:
    path = tmp_path / "volt" / "credentials.json"
    save_tokens(Tokens("http://volt.test", "old-access", "refresh-1", time.time() - 10,
                       "read write"), path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    seen: list[str] = []

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/oauth/token":
            form = dict(x.split("=") for x in request.content.decode().split("&"))
            assert form["refresh_token"] == "refresh-1"
            return httpx.Response(200, json={"access_token": "new-access", "token_type": "Bearer",
                                             "expires_in": 900, "refresh_token": "refresh-2",
                                             "scope": "read write"})
        seen.append(request.headers["authorization"])
        return httpx.Response(200, json=ME)

    with Client(http=httpx.Client(transport=httpx.MockTransport(answer)),
                credentials_file=path) as volt:
        volt.me()
    assert seen == ["Bearer new-access"]
    saved = load_tokens(path)
    assert saved is not None
    assert saved.refresh_token == "refresh-2"


def test_oauth_errors_become_typed_errors_too() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(
        400, json={"error": "invalid_grant", "error_description": "Unknown refresh token."}))
    with Client("http://volt.test", api_key="x", max_retries=0,
                http=httpx.Client(transport=transport)) as volt:
        from volt.sdk import _calls

        with pytest.raises(BadRequestError) as info:
            volt.run(_calls.refresh("volt-cli", "nope"))
    assert info.value.code == "invalid_grant"
    assert info.value.status == 400
    assert "Unknown refresh token" in str(info.value)
