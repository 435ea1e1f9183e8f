"""Training files: OpenAI's chat JSONL, the first bad line named; and the
trainer's sequences: the prompt exactly as the engine renders it, only the
reply in the loss."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from volt.agent.engine.backends import _Tokenizer
from volt.finetune import model_ids
from volt.finetune.dataset import InvalidFile, parse
from volt.finetune.trainer import IGNORE, sequences


def line(*messages: tuple[str, str]) -> bytes:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in messages]}).encode()


def test_a_good_file_parses_blank_lines_and_all() -> None:
    data = line(("user", "hi"), ("assistant", "hello")) + b"\n\n" + \
        line(("system", "s"), ("user", "q"), ("assistant", "a")) + b"\n"
    assert len(parse(data)) == 2


@pytest.mark.parametrize(("data", "number"), [
    (line(("user", "a"), ("assistant", "b")) + b"\n{oops\n", 2),
    (b'{"messages": []}\n', 1),
    (line(("user", "a"), ("assistant", "b")) + b"\n" + line(("user", "only")) + b"\n", 2),
    (line(("user", "a"), ("assistant", "b")) + b"\n\xff\xfe\n", 2),
    (b"[1, 2]\n", 1),
])
def test_the_first_bad_line_is_named(data: bytes, number: int) -> None:
    with pytest.raises(InvalidFile) as info:
        parse(data)
    assert info.value.line == number
    assert f"Line {number}" in str(info.value)


def test_an_empty_file_and_too_many_examples_are_refused() -> None:
    with pytest.raises(InvalidFile, match="empty"):
        parse(b"  \n")
    with pytest.raises(InvalidFile, match="more than 1 examples"):
        parse(line(("user", "a"), ("assistant", "b")) + b"\n" +
              line(("user", "a"), ("assistant", "b")), max_examples=1)


def test_sequences_mask_the_prompt_and_match_the_engines_rendering(tiny_model: Path) -> None:
    tokenizer = _Tokenizer(tiny_model)
    [example] = parse(line(("system", "s"), ("user", "q"), ("assistant", "a1"),
                           ("user", "q2"), ("assistant", "a2")))
    first, second = sequences([example], tokenizer.encode_chat, tokenizer.encode,
                              tokenizer.eos_id, 1024)
    prompt = tokenizer.encode_chat([("system", "s"), ("user", "q")])
    ids, labels = first
    assert ids[:len(prompt)] == prompt  # what the engine sends the model for this chat
    assert labels[:len(prompt)] == [IGNORE] * len(prompt)
    assert labels[len(prompt):] == [*tokenizer.encode("a1"), tokenizer.eos_id]
    assert len(second[0]) > len(ids)  # the second turn sees the whole conversation


def test_tuned_model_ids_round_trip_and_reject_lookalikes() -> None:
    tuned = model_ids.TunedModel("volt-tiny", "org_1", "my-suffix", "ftjob-" + "a" * 24)
    assert model_ids.parse(tuned.id) == tuned
    checkpoint = tuned.checkpoint(120)
    assert checkpoint.id == tuned.id + ":ckpt-step-120"
    assert model_ids.parse(checkpoint.id) == checkpoint
    for bad in ("volt-tiny", "ft:volt-tiny:org", "ft:a:b:c:ftjob-zz",
                "ft:volt.tiny:org:s:ftjob-" + "a" * 24, tuned.id + ":ckpt-step-0",
                tuned.id + ":ckpt-step-", tuned.id + ":ckpt-step-1x", tuned.id + ":ckpt-1"):
        assert model_ids.parse(bad) is None
