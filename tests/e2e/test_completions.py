"""``/v1/completions`` through the official client, on the real CPU engine."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from transformers import AutoTokenizer

PROMPT = "The metro of Frankfurt has"


def complete(sdk: openai.OpenAI, **params: Any) -> Any:
    params.setdefault("prompt", PROMPT)
    return sdk.completions.create(model="volt-tiny", **params)


def test_a_text_prompt_is_completed_without_the_chat_template(
    sdk: openai.OpenAI, tiny_model: Path
) -> None:
    reply = complete(sdk, max_tokens=9, temperature=0)
    assert reply.object == "text_completion"
    assert reply.id.startswith("cmpl-")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    prompt_ids = tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    assert reply.usage.prompt_tokens == len(prompt_ids)
    choice = reply.choices[0]
    assert choice.finish_reason in {"length", "stop"}
    assert reply.usage.completion_tokens <= 9
    if choice.finish_reason == "length":
        assert reply.usage.completion_tokens == 9
    assert reply.model_extra["volt"]["pod"] == "fra-1"


def test_max_tokens_defaults_to_16_as_in_openai(sdk: openai.OpenAI) -> None:
    reply = complete(sdk, temperature=0, prompt="a b c d e f")
    assert 1 <= reply.usage.completion_tokens <= 16


def test_token_ids_and_text_prompt_give_the_same_greedy_text(
    sdk: openai.OpenAI, tiny_model: Path
) -> None:
    ids = AutoTokenizer.from_pretrained(tiny_model)(PROMPT, add_special_tokens=False)["input_ids"]
    by_text = complete(sdk, max_tokens=12, temperature=0).choices[0].text
    by_ids = complete(sdk, prompt=ids, max_tokens=12, temperature=0).choices[0].text
    assert by_text == by_ids


def test_the_stream_carries_the_same_text_and_usage_last(sdk: openai.OpenAI) -> None:
    whole = complete(sdk, max_tokens=14, temperature=0)
    chunks = list(complete(sdk, max_tokens=14, temperature=0, stream=True,
                           stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == whole.choices[0].text
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens
    assert chunks[-1].model_extra["volt"]["metro"] == "fra"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == whole.choices[0].finish_reason
    assert all(f is None for f in finishes[:-1])


def test_several_prompts_with_n_choices_each(sdk: openai.OpenAI) -> None:
    prompts = ["Tiers of service:", "Metros near the sea:"]
    reply = complete(sdk, prompt=prompts, n=2, max_tokens=6, temperature=0)
    assert sorted(c.index for c in reply.choices) == [0, 1, 2, 3]
    by_index = {c.index: c.text for c in reply.choices}
    # Greedy: both choices of one prompt agree, and match that prompt alone.
    assert by_index[0] == by_index[1]
    assert by_index[2] == by_index[3]
    assert by_index[2] == complete(sdk, prompt=prompts[1], max_tokens=6,
                                   temperature=0).choices[0].text
    alone = [complete(sdk, prompt=p, max_tokens=6, temperature=0).usage for p in prompts]
    assert reply.usage.prompt_tokens == sum(u.prompt_tokens for u in alone)


@pytest.mark.parametrize("stream", [False, True])
def test_echo_puts_the_prompt_first(sdk: openai.OpenAI, stream: bool) -> None:
    reply = complete(sdk, echo=True, max_tokens=5, temperature=0, stream=stream)
    if stream:
        text = "".join(c.choices[0].text for c in reply if c.choices)
    else:
        text = reply.choices[0].text
    plain = complete(sdk, max_tokens=5, temperature=0).choices[0].text
    assert text == PROMPT + plain


@dataclass
class Logprobs:
    tokens: list[str]
    token_logprobs: list[float | None]
    tops: list[dict[str, float] | None]
    offsets: list[int]
    text: str
    usage: Any


def logprobs_of(reply: Any, stream: bool) -> Logprobs:
    """The first choice's log-probabilities and text, from a whole reply or a
    stream (usage included) put together."""
    if not stream:
        logprobs = reply.choices[0].logprobs
        return Logprobs(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs,
                        logprobs.text_offset, reply.choices[0].text, reply.usage)
    chunks = list(reply)
    parts = [c.choices[0].logprobs for c in chunks if c.choices and c.choices[0].logprobs]
    return Logprobs(
        [t for p in parts for t in p.tokens], [lp for p in parts for lp in p.token_logprobs],
        [t for p in parts for t in p.top_logprobs], [o for p in parts for o in p.text_offset],
        "".join(c.choices[0].text for c in chunks if c.choices), chunks[-1].usage)


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_list_tokens_with_their_alternatives(sdk: openai.OpenAI, stream: bool) -> None:
    reply = complete(sdk, logprobs=3, max_tokens=8, temperature=0, stream=stream,
                     stream_options={"include_usage": True} if stream else None)
    got = logprobs_of(reply, stream)
    tokens, token_logprobs, tops, offsets = got.tokens, got.token_logprobs, got.tops, got.offsets
    text, completion_tokens = got.text, got.usage.completion_tokens
    assert len(tokens) == len(token_logprobs) == len(tops) == len(offsets) == completion_tokens
    assert all(lp <= 0 for lp in token_logprobs)
    for chosen, top in zip(token_logprobs, tops, strict=True):
        assert 1 <= len(top) <= 3
        # Greedy: the chosen token is the likeliest one.
        assert max(top.values()) == pytest.approx(chosen, abs=1e-4)
    assert offsets == sorted(offsets)
    assert "".join(tokens) == text


def test_sampling_parameters_are_honoured(sdk: openai.OpenAI) -> None:
    greedy = complete(sdk, temperature=0, max_tokens=12).choices[0].text
    # top_p near 0 keeps only the likeliest token: greedy too.
    assert complete(sdk, temperature=1, top_p=1e-6, max_tokens=12).choices[0].text == greedy
    penalized = complete(sdk, temperature=0, max_tokens=12, presence_penalty=2.0,
                         frequency_penalty=2.0, user="tenant-user-7")
    assert penalized.usage.completion_tokens <= 12
    with pytest.raises(openai.BadRequestError):
        complete(sdk, temperature=3.5)


def test_same_seed_same_text(sdk: openai.OpenAI) -> None:
    runs = [complete(sdk, seed=7, temperature=1.0, max_tokens=16).choices[0].text
            for _ in range(2)]
    assert runs[0] == runs[1]


def test_a_stop_string_ends_the_text(sdk: openai.OpenAI) -> None:
    full = complete(sdk, max_tokens=30, temperature=0).choices[0].text
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip()
    reply = complete(sdk, max_tokens=30, temperature=0, stop=[stop])
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"


@pytest.mark.parametrize(("params", "status", "param"), [
    ({"prompt": []}, 400, "prompt"),
    ({"prompt": ["text", 12]}, 400, None),
    ({"suffix": "and then"}, 400, None),
    ({"best_of": 3}, 400, None),
    ({"prompt": [10_000_000]}, 400, None),
    ({"logprobs": 50}, 400, "logprobs"),
    ({"model": "gpt-3.5-turbo-instruct"}, 404, None),
])
def test_bad_requests_get_clear_errors(
    sdk: openai.OpenAI, params: dict[str, Any], status: int, param: str | None
) -> None:
    body = {"model": "volt-tiny", "prompt": PROMPT, **params}
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.completions.create(**body)
    assert caught.value.status_code == status
    error = caught.value.body
    assert isinstance(error, dict)
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_unknown_parameters_are_ignored(sdk: openai.OpenAI) -> None:
    reply = complete(sdk, max_tokens=2, extra_body={"some_future_option": {"x": 1}})
    assert reply.choices


def test_cached_prompt_tokens_are_reported(sdk: openai.OpenAI) -> None:
    prompt = "Frankfurt metro tier pod rack " * 30
    first, second = (complete(sdk, prompt=prompt, max_tokens=2) for _ in range(2))
    assert second.usage.prompt_tokens == first.usage.prompt_tokens
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 0 < cached < second.usage.prompt_tokens


@pytest.mark.parametrize("stream", [False, True])
def test_echo_with_logprobs_covers_the_prompts_tokens(sdk: openai.OpenAI, stream: bool) -> None:
    prompt = PROMPT + " 🙂"  # an emoji: tokens that hold only part of a character
    reply = complete(sdk, prompt=prompt, echo=True, logprobs=2, max_tokens=4, temperature=0,
                     stream=stream, stream_options={"include_usage": True} if stream else None)
    got = logprobs_of(reply, stream)
    tokens, token_logprobs, tops, offsets = got.tokens, got.token_logprobs, got.tops, got.offsets
    text, usage = got.text, got.usage
    assert text.startswith(prompt)
    assert len(tokens) == usage.prompt_tokens + usage.completion_tokens
    # The first prompt token has nothing before it: null, as OpenAI and vLLM answer.
    assert (token_logprobs[0], tops[0]) == (None, None)
    assert all(lp <= 0 for lp in token_logprobs[1:])
    assert all(1 <= len(top) <= 2 for top in tops[1:])
    assert "\ufffd" not in "".join(tokens)  # a part of the emoji is its bytes, escaped
    assert any(token.startswith("\\x") for token in tokens)
    # Offsets count characters of the returned text, from its start: each
    # token's offset is where its (first whole) character begins.
    assert offsets[0] == 0
    assert offsets == sorted(offsets)
    emoji_at = text.index("🙂")
    assert emoji_at in offsets
    assert emoji_at + 1 in offsets or offsets[-1] == emoji_at
    prompt_offsets = offsets[:usage.prompt_tokens]
    assert prompt_offsets[-1] <= len(prompt) <= offsets[usage.prompt_tokens]


def test_chat_logprobs_carry_real_bytes_and_distinct_alternatives(sdk: openai.OpenAI) -> None:
    reply = sdk.chat.completions.create(
        model="volt-tiny", messages=[{"role": "user", "content": "Say 🙂 and ünï"}],
        max_tokens=40, temperature=1.0, seed=7, logprobs=True, top_logprobs=20)
    content = reply.choices[0].logprobs.content
    # The bytes of all tokens together are the text (a token that holds part
    # of a character carries its real bytes, not U+FFFD's; a random model may
    # also put out bytes that are no UTF-8 at all, which the text shows as U+FFFD).
    assert bytes(b for entry in content for b in entry.bytes).decode(errors="replace") == \
        reply.choices[0].message.content
    for entry in content:
        alternatives = [top.token for top in entry.top_logprobs]
        assert len(alternatives) == len(set(alternatives)) == 20
        for top in entry.top_logprobs:
            assert top.token == bytes(top.bytes).decode("utf-8", errors="backslashreplace")
