"""Hostile input on the inference surface: whatever a client sends, the answer is
a success or a 4xx in OpenAI's error envelope, never a 5xx.

Bodies start from a valid request and have one field replaced by anything
JSON can hold (or by what it cannot: NaN, deep nesting, huge numbers), or are
not JSON at all; headers are mangled too. Each answer is checked as it comes.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from volt.testing import Cluster

VALID = {
    "/v1/chat/completions": {"model": "volt-tiny", "max_tokens": 1,
                             "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "volt-tiny", "max_tokens": 1, "prompt": "hi"},
    "/v1/embeddings": {"model": "all-minilm-l6-v2", "input": "hi"},
}
FIELDS = {
    "/v1/chat/completions": ["model", "messages", "max_tokens", "temperature", "top_p", "n",
                             "stop", "seed", "logprobs", "top_logprobs", "stream",
                             "stream_options", "response_format", "presence_penalty",
                             "frequency_penalty", "user", "volt", "max_completion_tokens",
                             "logit_bias", "tools", "tool_choice"],
    "/v1/completions": ["model", "prompt", "max_tokens", "temperature", "n", "echo", "logprobs",
                        "stop", "seed", "stream", "suffix", "best_of", "volt", "user"],
    "/v1/embeddings": ["model", "input", "encoding_format", "dimensions", "user", "volt"],
}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12,
)
# Small numbers where they would make a valid request generate for long.
short = st.integers(min_value=-3, max_value=4)


def envelope_problem(status: int, body: bytes) -> str | None:
    if status >= 500:
        return f"a {status} for client input: {body[:300]!r}"
    if status < 400:
        return None
    try:
        error = json.loads(body)["error"]
    except (ValueError, KeyError, TypeError):
        return f"a {status} without OpenAI's error envelope: {body[:300]!r}"
    if not isinstance(error, dict) or not {"message", "type", "param", "code"} <= error.keys():
        return f"an incomplete error object: {error!r}"
    return None


def post(client: httpx.Client, path: str, content: bytes,
         headers: dict[str, str] | dict[str, bytes]) -> httpx.Response:
    return client.post(path, content=content, headers=headers)


@pytest.fixture(scope="module")
def http(two_metros: Cluster) -> Any:
    with httpx.Client(base_url=f"http://127.0.0.1:{two_metros.api_port}", timeout=60) as client:
        yield client


FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


@pytest.mark.parametrize("path", list(VALID))
def test_one_field_replaced_by_anything(two_metros: Cluster, http: httpx.Client,
                                        path: str) -> None:
    headers = {"Authorization": f"Bearer {two_metros.api_key}",
               "Content-Type": "application/json"}

    @FUZZ
    @given(data=st.data())
    def check(data: st.DataObject) -> None:
        field = data.draw(st.sampled_from(FIELDS[path]))
        value = data.draw(short if field in {"max_tokens", "n", "max_completion_tokens",
                                             "best_of", "top_logprobs"} else values)
        body = {**VALID[path], field: value}
        if field != "stream":
            body["stream"] = data.draw(st.booleans()) if path != "/v1/embeddings" else False
        response = post(http, path, json.dumps(body).encode(), headers)
        problem = envelope_problem(response.status_code, response.content)
        assert problem is None, (field, value, problem)

    check()


@pytest.mark.parametrize("path", list(VALID))
def test_bodies_and_headers_that_are_not_requests(two_metros: Cluster, http: httpx.Client,
                                                  path: str) -> None:
    @FUZZ
    @given(body=st.one_of(st.binary(max_size=200), st.text(max_size=200).map(str.encode),
                          st.recursive(st.just([]), lambda x: st.lists(x, max_size=1),
                                       max_leaves=3000).map(lambda v: json.dumps(v).encode())),
           content_type=st.sampled_from(["application/json", "text/plain", "", "x/\x7f",
                                         "application/json; charset=latin-1"]),
           authorization=st.one_of(st.just(f"Bearer {two_metros.api_key}"),
                                   st.text(max_size=60).filter(str.isprintable)))
    def check(body: bytes, content_type: str, authorization: str) -> None:
        # Header bytes as a client may send them (UTF-8, not only ASCII).
        headers: dict[str, bytes] = {"Authorization": authorization.encode()}
        if content_type and content_type.isprintable():
            headers["Content-Type"] = content_type.encode()
        try:
            response = post(http, path, body, headers)
        except httpx.LocalProtocolError:
            return  # the client itself refuses to send such a header
        problem = envelope_problem(response.status_code, response.content)
        assert problem is None, (body[:80], content_type, authorization[:20], problem)

    check()
