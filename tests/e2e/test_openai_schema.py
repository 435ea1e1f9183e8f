"""Every response shape Volt produces, checked against OpenAI's own published
schemas (the pinned OpenAPI document beside the project), on the raw bytes the
official client receives, across the parameters that change shapes."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from support.openai_schema import DOCUMENT, problems

from volt.testing import Cluster

if not DOCUMENT.exists():
    pytest.skip(f"OpenAI's OpenAPI document is not at {DOCUMENT} (see ../shared/data/README.md)",
                allow_module_level=True)

MESSAGES = [{"role": "user", "content": "Tell me about metros."}]


def post(cluster: Cluster, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{cluster.api_port}{path}", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {cluster.api_key}"})


def events(response: httpx.Response) -> list[Any]:
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert data[-1] == "[DONE]"
    return [json.loads(item) for item in data[:-1]]


CHAT_CASES = {
    "plain": {},
    "n and stop": {"n": 2, "stop": ["."]},
    "logprobs": {"logprobs": True, "top_logprobs": 3},
}


@pytest.mark.parametrize("extra", CHAT_CASES.values(), ids=CHAT_CASES.keys())
def test_chat_completions_match_openais_schema(two_metros: Cluster,
                                               extra: dict[str, Any]) -> None:
    body = {"model": "volt-tiny", "messages": MESSAGES, "max_tokens": 6, **extra}
    whole = post(two_metros, "/v1/chat/completions", body)
    assert whole.status_code == 200
    assert problems("CreateChatCompletionResponse", whole.json()) == []
    stream = post(two_metros, "/v1/chat/completions",
                  {**body, "stream": True, "stream_options": {"include_usage": True}})
    chunks = events(stream)
    for chunk in chunks:
        assert problems("CreateChatCompletionStreamResponse", chunk) == [], chunk
    assert all("usage" in chunk and chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["usage"]["completion_tokens"] > 0


COMPLETION_CASES = {
    "plain": {},
    "several prompts, n": {"prompt": ["a", "b"], "n": 2},
    "logprobs": {"logprobs": 2},
    "echo, logprobs": {"echo": True, "logprobs": 2},
}


def _first_prompt_token_as_schema_allows(choice: dict[str, Any]) -> dict[str, Any]:
    """With ``echo`` and ``logprobs``, OpenAI's API (and vLLM's) give the prompt's
    first token a null logprob and null alternatives (nothing came before it);
    the published schema says numbers and objects. Only that entry is relaxed."""
    logprobs = choice.get("logprobs")
    if not logprobs or not logprobs["token_logprobs"] or logprobs["token_logprobs"][0] is not None:
        return choice
    assert logprobs["top_logprobs"][0] is None
    return {**choice, "logprobs": {
        **logprobs, "token_logprobs": [0.0, *logprobs["token_logprobs"][1:]],
        "top_logprobs": [{}, *logprobs["top_logprobs"][1:]]}}


@pytest.mark.parametrize("extra", COMPLETION_CASES.values(), ids=COMPLETION_CASES.keys())
def test_completions_match_openais_schema(two_metros: Cluster, extra: dict[str, Any]) -> None:
    body = {"model": "volt-tiny", "prompt": "Metros:", "max_tokens": 5, **extra}
    whole = post(two_metros, "/v1/completions", body)
    assert whole.status_code == 200
    reply = whole.json()
    if extra.get("echo"):
        assert reply["choices"][0]["logprobs"]["token_logprobs"][0] is None
    reply["choices"] = [_first_prompt_token_as_schema_allows(c) for c in reply["choices"]]
    assert problems("CreateCompletionResponse", reply) == []
    for chunk in events(post(two_metros, "/v1/completions", {**body, "stream": True})):
        # OpenAI documents no separate stream shape for text completions; its API
        # (and vLLM's) sends "finish_reason": null until a choice ends, which the
        # whole-response schema does not allow. Everything else must conform.
        checked = {**chunk, "choices": [
            _first_prompt_token_as_schema_allows(
                {**c, "finish_reason": c["finish_reason"] or "length"})
            for c in chunk["choices"]]}
        assert problems("CreateCompletionResponse", checked) == [], chunk


def test_models_and_errors_match_openais_schema(two_metros: Cluster) -> None:
    headers = {"Authorization": f"Bearer {two_metros.api_key}"}
    base = f"http://127.0.0.1:{two_metros.api_port}"
    assert problems("ListModelsResponse", httpx.get(f"{base}/v1/models",
                                                    headers=headers).json()) == []
    assert problems("Model", httpx.get(f"{base}/v1/models/volt-tiny",
                                       headers=headers).json()) == []
    missing = post(two_metros, "/v1/chat/completions", {"model": "gpt-9", "messages": MESSAGES})
    assert missing.status_code == 404
    assert problems("ErrorResponse", missing.json()) == []
    for model, status in (("volt-tiny", 403), (f"ft:volt-tiny:x::ftjob-{'0' * 24}", 404)):
        refused = httpx.delete(f"{base}/v1/models/{model}", headers=headers)
        assert refused.status_code == status
        assert problems("ErrorResponse", refused.json()) == []
