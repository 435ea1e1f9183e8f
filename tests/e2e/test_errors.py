"""Bad input on every route gets OpenAI's error envelope and status, never a 500."""

from __future__ import annotations

import json
import socket
import urllib.request

import openai
import pytest

from volt.testing import Cluster

GOOD = {"model": "volt-tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}


def raw(port: int, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], dict[str, object]]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=body,
                                 method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read())


def auth(cluster: Cluster) -> dict[str, str]:
    return {"Authorization": f"Bearer {cluster.api_key}", "Content-Type": "application/json"}


CASES = [
    # (name, method, path, body, use_key, status, code or None, param or None)
    ("bad json", "POST", "/v1/chat/completions", b"{nope", True, 400, None, None),
    ("empty body", "POST", "/v1/chat/completions", b"", True, 400, None, None),
    ("json array", "POST", "/v1/chat/completions", b"[]", True, 400, None, None),
    ("missing messages", "POST", "/v1/chat/completions", b'{"model": "volt-tiny"}', True, 400,
     None, None),
    ("no messages", "POST", "/v1/chat/completions",
     b'{"model": "volt-tiny", "messages": []}', True, 400, None, "messages"),
    ("bad role", "POST", "/v1/chat/completions",
     b'{"model": "volt-tiny", "messages": [{"role": "wizard", "content": "x"}]}', True, 400,
     None, "messages[0].role"),
    ("bad temperature", "POST", "/v1/chat/completions",
     json.dumps({**GOOD, "temperature": 9}).encode(), True, 400, None, "temperature"),
    ("zero max_tokens", "POST", "/v1/chat/completions",
     json.dumps({**GOOD, "max_tokens": 0}).encode(), True, 400, None, "max_tokens"),
    ("image part", "POST", "/v1/chat/completions", json.dumps({**GOOD, "messages": [
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}
    ]}).encode(), True, 400, None, None),
    ("bad volt option", "POST", "/v1/chat/completions",
     json.dumps({**GOOD, "volt": {"metro": "fra", "colour": "red"}}).encode(), True, 400, None,
     None),
    ("unknown model", "POST", "/v1/chat/completions",
     json.dumps({**GOOD, "model": "gpt-9"}).encode(), True, 404, "model_not_found", "model"),
    ("context too long", "POST", "/v1/chat/completions",
     json.dumps({**GOOD, "max_tokens": 10_000_000}).encode(), True, 400,
     "context_length_exceeded", None),
    ("no key", "POST", "/v1/chat/completions", json.dumps(GOOD).encode(), False, 401,
     "invalid_api_key", None),
    ("models no key", "GET", "/v1/models", None, False, 401, "invalid_api_key", None),
    ("model no key", "GET", "/v1/models/volt-tiny", None, False, 401, "invalid_api_key", None),
    ("unknown model id", "GET", "/v1/models/gpt-9", None, True, 404, "model_not_found", "model"),
    ("wrong method", "GET", "/v1/chat/completions", None, True, 405, "method_not_allowed", None),
    ("wrong method models", "POST", "/v1/models", b"{}", True, 405, "method_not_allowed", None),
    ("unknown route", "GET", "/v1/nope", None, True, 404, "unknown_url", None),
    # Found by trying hostile input (Spark hardening issue): each was a 5xx.
    ("seed beyond 64 bits", "POST", "/v1/chat/completions",
     json.dumps({**GOOD, "seed": 2**64}).encode(), True, 400, None, "seed"),
    ("unknown metro", "POST", "/v1/chat/completions",
     json.dumps({**GOOD, "volt": {"metro": "atlantis"}}).encode(), True, 400, "unknown_metro",
     "volt.metro"),
    ("unknown tier", "POST", "/v1/chat/completions",
     json.dumps({**GOOD, "volt": {"tier": "platinum"}}).encode(), True, 400, "unknown_tier",
     "volt.tier"),
    ("nested 100,000 deep", "POST", "/v1/chat/completions",
     json.dumps(GOOD).encode()[:-1] + b', "junk": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
     True, 400, None, None),
    ("over one bus message", "POST", "/v1/chat/completions", json.dumps({**GOOD, "messages": [
        {"role": "user", "content": "x" * (2 * 1024 * 1024)}]}).encode(), True, 413,
     "payload_too_large", None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "use_key", "status", "code", "param"),
    [case[1:] for case in CASES], ids=[case[0] for case in CASES],
)
def test_bad_input_gets_the_documented_error(
    two_metros: Cluster, api_port: int, method: str, path: str, body: bytes | None,
    use_key: bool, status: int, code: str | None, param: str | None,
) -> None:
    headers = auth(two_metros) if use_key else {"Content-Type": "application/json"}
    got, _, payload = raw(api_port, method, path, body, headers)
    assert got == status, payload
    error = payload["error"]
    assert isinstance(error, dict)
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    assert error["type"] == ("authentication_error" if status == 401 else "invalid_request_error")
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param


def test_a_body_over_the_limit_is_refused_from_its_header(
    two_metros: Cluster, api_port: int
) -> None:
    """413 before reading 17 MB: the server answers from Content-Length alone."""
    with socket.create_connection(("127.0.0.1", api_port), timeout=10) as conn:
        conn.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: volt\r\n"
            + f"Authorization: Bearer {two_metros.api_key}\r\n".encode()
            + f"Content-Length: {17 * 1024 * 1024}\r\n\r\n".encode()
        )
        response = b""
        while b"\r\n\r\n" not in response or b"}}" not in response:
            data = conn.recv(65536)
            if not data:
                break
            response += data
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413")
    assert json.loads(body)["error"]["code"] == "payload_too_large"


def test_wrong_key_and_scheme(api_port: int) -> None:
    for header in ("Bearer volt_sk_live_" + "A" * 43, "Token abc", "Bearer"):
        status, headers, _payload = raw(api_port, "GET", "/v1/models", None,
                                        {"Authorization": header})
        assert status == 401
        assert {k.lower() for k in headers} >= {"www-authenticate"}


def test_the_openai_client_raises_its_typed_errors(two_metros: Cluster, api_port: int) -> None:
    base_url = f"http://127.0.0.1:{api_port}/v1"
    with openai.OpenAI(base_url=base_url, api_key="volt_sk_live_" + "B" * 43,
                       max_retries=0) as bad, pytest.raises(openai.AuthenticationError):
        bad.models.list()
    with openai.OpenAI(base_url=base_url, api_key=two_metros.api_key,
                       max_retries=0) as sdk:
        with pytest.raises(openai.NotFoundError) as info:
            sdk.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "x"}])
        assert info.value.code == "model_not_found"
        with pytest.raises(openai.BadRequestError):
            sdk.chat.completions.create(model="volt-tiny", messages=[])


def test_unknown_parameters_are_ignored(two_metros: Cluster, api_port: int) -> None:
    status, _, payload = raw(api_port, "POST", "/v1/chat/completions", json.dumps(
        {**GOOD, "reasoning_effort": "high", "metadata": {"a": 1}, "parallel_tool_calls": True}
    ).encode(), auth(two_metros))
    assert status == 200, payload


def test_health_and_docs_are_public(api_port: int) -> None:
    for path in ("/healthz", "/readyz", "/openapi.yaml", "/metrics"):
        with urllib.request.urlopen(f"http://127.0.0.1:{api_port}{path}") as resp:
            assert resp.status == 200


def test_fine_tuning_names_what_is_missing(two_metros: Cluster, api_port: int) -> None:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1", api_key=two_metros.api_key,
                       max_retries=0) as sdk:
        with pytest.raises(openai.NotFoundError) as info:
            sdk.fine_tuning.jobs.create(model="volt-tiny", training_file="file-abc")
        assert info.value.body["param"] == "training_file"  # type: ignore[index]
    for method, path in (("GET", "/v1/fine-tuning/jobs/ftjob-1"),
                         ("GET", "/v1/fine_tuning/jobs/ftjob-1/events"),
                         ("GET", "/v1/files/file-1")):
        status, _, payload = raw(api_port, method, path, None, auth(two_metros))
        assert status == 404, payload
        assert payload["error"]["code"] in ("job_not_found", "file_not_found")
