"""OpenAI sampling parameters, through the official client, on the real CPU engine."""

from __future__ import annotations

from typing import Any

import openai
import pytest

MESSAGES: list[Any] = [{"role": "user", "content": "Tell me about metros and tiers."}]


def complete(sdk: openai.OpenAI, **params: Any) -> Any:
    return sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES, **params)


def text(sdk: openai.OpenAI, **params: Any) -> str:
    return complete(sdk, **params).choices[0].message.content or ""


def test_temperature_zero_is_greedy_and_repeatable(sdk: openai.OpenAI) -> None:
    first = text(sdk, temperature=0, max_tokens=24)
    assert first == text(sdk, temperature=0, max_tokens=24)
    # top_p near 0 keeps only the likeliest token: greedy too.
    assert first == text(sdk, temperature=1, top_p=1e-6, max_tokens=24)


def test_same_seed_same_output_different_seeds_differ(sdk: openai.OpenAI) -> None:
    runs = {seed: text(sdk, seed=seed, temperature=1.0, max_tokens=24) for seed in (1, 2, 3)}
    assert text(sdk, seed=2, temperature=1.0, max_tokens=24) == runs[2]
    assert len(set(runs.values())) >= 2


def test_max_completion_tokens_wins_over_max_tokens(sdk: openai.OpenAI) -> None:
    reply = complete(sdk, max_tokens=30, max_completion_tokens=7, temperature=0)
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == 7


@pytest.mark.parametrize("stream", [False, True])
def test_stop_strings_end_the_completion(sdk: openai.OpenAI, stream: bool) -> None:
    full = text(sdk, temperature=0, max_tokens=40)
    stop = full[len(full) // 2: len(full) // 2 + 3]
    assert stop.strip()
    expected = full[: full.index(stop)]
    params: dict[str, Any] = {"temperature": 0, "max_tokens": 40, "stop": [stop, "\x00never"]}
    if stream:
        chunks = list(complete(sdk, stream=True, **params))
        got = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and
                  c.choices[0].finish_reason]
    else:
        reply = complete(sdk, **params)
        got, finish = reply.choices[0].message.content or "", [reply.choices[0].finish_reason]
    assert got == expected
    assert finish == ["stop"]


def test_n_choices(sdk: openai.OpenAI) -> None:
    reply = complete(sdk, n=3, seed=7, temperature=1.0, max_tokens=6)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) >= 2
    # Usage counts the prompt once and every choice's tokens.
    single = complete(sdk, seed=7, temperature=1.0, max_tokens=6)
    assert reply.usage.prompt_tokens == single.usage.prompt_tokens
    if all(c.finish_reason == "length" for c in reply.choices):
        assert reply.usage.completion_tokens == 3 * 6
    else:
        assert 3 <= reply.usage.completion_tokens < 3 * 6
    chunks = list(complete(sdk, n=2, max_tokens=4, stream=True))
    assert {c.choices[0].index for c in chunks if c.choices} == {0, 1}
    # One choice per chunk, as OpenAI streams them, finishes included.
    assert all(len(c.choices) <= 1 for c in chunks)
    assert sorted(c.choices[0].index for c in chunks
                  if c.choices and c.choices[0].finish_reason) == [0, 1]


def test_logprobs_and_top_logprobs(sdk: openai.OpenAI) -> None:
    reply = complete(sdk, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3)
    content = reply.choices[0].logprobs.content
    assert len(content) == reply.usage.completion_tokens
    for entry in content:
        assert entry.logprob <= 0
        assert len(entry.top_logprobs) == 3
        # Greedy: the chosen token is the likeliest one.
        assert entry.top_logprobs[0].logprob == pytest.approx(entry.logprob)
    streamed = list(complete(sdk, temperature=0, max_tokens=8, logprobs=True, stream=True))
    entries = [e for c in streamed if c.choices and c.choices[0].logprobs
               for e in c.choices[0].logprobs.content]
    assert [e.token for e in entries] == [e.token for e in content]


def test_penalties_change_a_repetitive_completion(sdk: openai.OpenAI) -> None:
    plain = text(sdk, temperature=0, max_tokens=40)
    penalised = text(sdk, temperature=0, max_tokens=40, frequency_penalty=2.0,
                     presence_penalty=2.0)
    assert penalised != plain


def test_json_response_formats_are_refused_clearly(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        complete(sdk, response_format={"type": "json_object"})
    assert "not supported by this engine" in info.value.message
    assert text(sdk, response_format={"type": "text"}, max_tokens=2) is not None


def test_user_and_unknown_parameters_are_accepted(sdk: openai.OpenAI) -> None:
    assert complete(sdk, user="u-123", max_tokens=2,
                    extra_body={"store": True, "reasoning_effort": "low"}).choices
