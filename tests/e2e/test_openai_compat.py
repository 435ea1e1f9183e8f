"""The spine end to end, through the official openai client."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import openai
from transformers import AutoTokenizer

from volt.testing import Cluster

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three metros."},
]


def prompt_tokens(model_dir: Path) -> int:
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    text = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    return len(tokenizer(text)["input_ids"])


def check_volt_block(volt: dict[str, Any], pods: set[str]) -> None:
    assert volt["pod"] in pods
    assert volt["metro"] == volt["pod"].split("-")[0]
    assert volt["tier"] == "standard"
    timing = volt["timing"]
    assert 0 <= timing["queue_ms"] <= timing["ttft_ms"] <= timing["total_ms"] < 60_000


def test_chat_completion(client: openai.OpenAI, tiny_model: Path) -> None:
    reply = client.chat.completions.create(model="volt-tiny", messages=MESSAGES, max_tokens=8)
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "volt-tiny"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert isinstance(choice.message.content, str)
    assert choice.finish_reason in {"length", "stop"}
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == prompt_tokens(tiny_model)
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 8
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    check_volt_block(reply.model_extra["volt"], {"fra-1", "ams-1"})  # type: ignore[index]


def test_streaming_with_usage(client: openai.OpenAI, tiny_model: Path) -> None:
    chunks = list(client.chat.completions.create(
        model="volt-tiny", messages=MESSAGES, max_tokens=16, stream=True,
        stream_options={"include_usage": True},
    ))
    *body, last = chunks
    assert last.choices == []
    assert last.usage is not None
    assert last.usage.prompt_tokens == prompt_tokens(tiny_model)
    finishes = [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason]
    assert finishes in (["length"], ["stop"])
    if finishes == ["length"]:
        assert last.usage.completion_tokens == 16
    assert body[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1
    check_volt_block(last.model_extra["volt"], {"fra-1", "ams-1"})  # type: ignore[index]
    assert all("volt" not in (c.model_extra or {}) for c in body)


def test_streaming_without_usage_ends_with_the_finish_chunk(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(
        model="volt-tiny", messages=MESSAGES, max_tokens=4, stream=True,
    ))
    assert all(c.choices for c in chunks)  # naive `chunk.choices[0]` code keeps working
    last = chunks[-1]
    assert last.choices[0].finish_reason in {"length", "stop"}
    assert last.usage is None
    check_volt_block(last.model_extra["volt"], {"fra-1", "ams-1"})  # type: ignore[index]


def test_models(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["volt-tiny"]
    model = client.models.retrieve("volt-tiny")
    assert (model.id, model.object, model.owned_by) == ("volt-tiny", "model", "volt")


def test_a_pinned_metro_is_the_only_one_used(client: openai.OpenAI) -> None:
    for metro, pod in (("fra", "fra-1"), ("ams", "ams-1")):
        for _ in range(6):
            reply = client.chat.completions.create(
                model="volt-tiny", messages=MESSAGES, max_tokens=1,
                extra_body={"volt": {"metro": metro}},
            )
            assert reply.model_extra["volt"]["pod"] == pod  # type: ignore[index]
            assert reply.model_extra["volt"]["metro"] == metro  # type: ignore[index]
        stream = client.chat.completions.create(
            model="volt-tiny", messages=MESSAGES, max_tokens=2, stream=True,
            extra_body={"volt": {"metro": [metro]}},
        )
        assert list(stream)[-1].model_extra["volt"]["pod"] == pod  # type: ignore[index]


def test_unpinned_requests_use_both_metros(client: openai.OpenAI) -> None:
    # The routing view counts other API replicas' requests (the other server's
    # tests) until the next heartbeat reaches the next view: one stale busy
    # pod would rightly draw all 30 quick requests to the other.
    time.sleep(1.5)
    pods = {
        client.chat.completions.create(
            model="volt-tiny", messages=MESSAGES, max_tokens=1
        ).model_extra["volt"]["pod"]  # type: ignore[index]
        for _ in range(30)
    }
    assert pods == {"fra-1", "ams-1"}


def test_a_metro_with_no_pod_is_503_with_retry_after(two_metros: Cluster, api_port: int) -> None:
    """sin is a metro of the fleet (configured) with no node up: try later.
    A metro the fleet does not serve at all is a 400 (tests/e2e/test_errors.py)."""
    status, headers, body = two_metros.request("/v1/chat/completions", {
        "model": "volt-tiny", "messages": MESSAGES, "volt": {"metro": "sin"},
    }, port=api_port)
    assert status == 503
    assert int({k.lower(): v for k, v in headers.items()}["retry-after"]) >= 1
    assert b'"no_healthy_pod"' in body
