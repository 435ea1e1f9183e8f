"""``/v1/embeddings`` through the official client: all-MiniLM-L6-v2 on its own engine."""

from __future__ import annotations

import base64
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest

from volt.agent.engine.embedding_server import model_path
from volt.testing import Cluster

MODEL = "all-minilm-l6-v2"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("embed"), model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra", embedding_model=MODEL)
        cluster.start_api()
        cluster.wait_routable()
        cluster.wait_routable(embedding_model=MODEL)
        yield cluster


@pytest.fixture(scope="module")
def sdk(cluster: Cluster) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                       max_retries=0) as client:
        yield client


@pytest.fixture(scope="module")
def reference() -> Any:
    """The model run directly by sentence-transformers: what Volt must return."""
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(model_path()), device="cpu", local_files_only=True)


def call(cluster: Cluster, body: dict[str, Any]) -> tuple[int, Any]:
    status, _, data = cluster.request("/v1/embeddings", body)
    return status, json.loads(data)


def embed(sdk: openai.OpenAI, texts: str | list[str], **params: Any) -> Any:
    return sdk.embeddings.create(model=MODEL, input=texts, **params)


def test_the_model_is_listed_beside_the_chat_model(sdk: openai.OpenAI) -> None:
    ids = {model.id for model in sdk.models.list()}
    assert {"volt-tiny", MODEL} <= ids


@pytest.mark.parametrize("encoding_format", ["float", "base64", None])
def test_vectors_equal_the_models_own_output(
    sdk: openai.OpenAI, reference: Any, encoding_format: str | None
) -> None:
    texts = ["Sovereign GPU clouds keep data in their metro.", "A bowl of soup", "ünïcødé ✓"]
    params = {"encoding_format": encoding_format} if encoding_format else {}
    reply = embed(sdk, texts, **params)
    assert reply.object == "list"
    assert reply.model == MODEL
    assert [item.index for item in reply.data] == [0, 1, 2]
    expected = reference.encode(texts)
    for item, want in zip(reply.data, expected, strict=True):
        if isinstance(item.embedding, str):  # asked for base64: the client leaves it as is
            got = np.frombuffer(base64.b64decode(item.embedding), dtype="<f4")
        else:  # floats, or base64 the client asked for on its own and decoded
            got = np.asarray(item.embedding, dtype=np.float32)
        assert got.shape == (384,)
        assert math.isclose(float(np.linalg.norm(got)), 1.0, abs_tol=1e-4)
        np.testing.assert_allclose(got, want, atol=1e-5)
    tokens = sum(len(ids) for ids in reference.tokenizer(texts)["input_ids"])
    assert reply.usage.prompt_tokens == reply.usage.total_tokens == tokens
    assert reply.model_extra["volt"]["pod"] == "fra-1"


def test_base64_is_little_endian_float32_as_openai_sends_it(cluster: Cluster) -> None:
    status, body = call(cluster, {"model": MODEL, "input": "metro", "encoding_format": "base64"})
    assert status == 200
    raw = base64.b64decode(body["data"][0]["embedding"])
    assert len(raw) == 384 * 4
    as_float = call(cluster, {"model": MODEL, "input": "metro"})[1]
    np.testing.assert_array_equal(np.frombuffer(raw, dtype="<f4"),
                                  np.asarray(as_float["data"][0]["embedding"], dtype=np.float32))


def test_meaning_is_closer_than_unrelated_text(sdk: openai.OpenAI) -> None:
    texts = ["The cat sits on the mat.", "A kitten is resting on a rug.", "Quarterly tax filing"]
    vectors = [np.asarray(item.embedding) for item in embed(sdk, texts,
                                                            encoding_format="float").data]
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2


def test_many_inputs_come_back_whole_and_in_order(sdk: openai.OpenAI, reference: Any) -> None:
    texts = [f"input number {i}" for i in range(600)]  # more than one NATS message of vectors
    reply = embed(sdk, texts, encoding_format="float")
    assert [item.index for item in reply.data] == list(range(600))
    expected = reference.encode([texts[0], texts[599]])
    np.testing.assert_allclose(reply.data[0].embedding, expected[0], atol=1e-5)
    np.testing.assert_allclose(reply.data[599].embedding, expected[1], atol=1e-5)


@pytest.mark.parametrize(("params", "status", "fragment"), [
    ({"input": ""}, 400, "empty"),
    ({"input": []}, 400, "input"),
    ({"input": "word " * 400}, 400, "maximum"),
    ({"dimensions": 128}, 400, "384"),
    ({"encoding_format": "int8"}, 400, "encoding_format"),
    ({"model": "text-embedding-3-small"}, 404, "does not exist"),
    ({"input": [[101, 2000]]}, 400, "token-id"),
    ({"input": [101, 2000]}, 400, "token-id"),
])
def test_bad_requests_get_clear_errors(
    cluster: Cluster, params: dict[str, Any], status: int, fragment: str
) -> None:
    got, body = call(cluster, {"model": MODEL, "input": "x", **params})
    assert got == status
    assert fragment in body["error"]["message"]


def test_a_model_used_on_the_wrong_endpoint_is_named(cluster: Cluster) -> None:
    status, body = call(cluster, {"model": "volt-tiny", "input": "x"})
    assert status == 404
    assert "`volt-tiny` does not support /v1/embeddings" in body["error"]["message"]
    status, _, data = cluster.request("/v1/chat/completions", {
        "model": MODEL, "messages": [{"role": "user", "content": "x"}],
    })
    assert status == 404
    message = json.loads(data)["error"]["message"]
    assert f"`{MODEL}` does not support /v1/chat/completions" in message


def test_embeddings_are_metered_to_the_token(cluster: Cluster, reference: Any) -> None:
    key = cluster.add_key("embedding-meter")  # a tenant of its own: nothing else counts here
    texts = ["one metro", "two tiers and a pod"]
    status, _, _ = cluster.request("/v1/embeddings", {"model": MODEL, "input": texts}, key=key)
    assert status == 200
    tokens = sum(len(ids) for ids in reference.tokenizer(texts)["input_ids"])
    deadline = time.monotonic() + 15
    while True:
        status, _, data = cluster.request("/v1/usage?group_by=model", key=key)
        assert status == 200
        rows = json.loads(data)["data"]
        if rows or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert rows == [{"model": MODEL, "requests": 1, "prompt_tokens": tokens,
                     "completion_tokens": 0, "cached_tokens": 0, "total_tokens": tokens}]
