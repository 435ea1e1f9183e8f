"""Tuned models decoded together on one KV cache give what each model gives
alone: requests of two adapters joining and leaving at different rounds,
greedy, against a fresh peft model that recomputes the whole sequence for
every token (no cache, one request at a time)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from volt.agent.engine.lora import LoraAdapters, Step
from volt.agent.engine.sampling import SamplingParams

REPLIES = {"a": "The answer is heliotrope.", "b": "Volt serves tokens in Frankfurt."}


@pytest.fixture(scope="module")
def adapters(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    made = {}
    for name, reply in REPLIES.items():
        folder = tmp_path_factory.mktemp(f"adapter-{name}")
        data = folder / "train.jsonl"
        data.write_text("\n".join(json.dumps({"messages": [
            {"role": "user", "content": "Say it."},
            {"role": "assistant", "content": reply}]}) for _ in range(8)))
        subprocess.run([sys.executable, "-m", "volt.finetune.trainer", "--base",
                        str(tiny_model), "--data", str(data), "--out", str(folder / "out"),
                        "--epochs", "6", "--batch-size", "4", "--seed", "3"],
                       check=True, capture_output=True, timeout=300)
        made[name] = folder / "out" / "adapter"
    return made


def reference(tiny_model: Path, adapter: Path, prompt: list[int], tokens: int,
              eos: int) -> tuple[list[int], list[float]]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, str(adapter)).eval()
    sequence, logprobs = list(prompt), []
    with torch.no_grad():
        while len(sequence) - len(prompt) < tokens:
            logits = model(input_ids=torch.tensor([sequence]), use_cache=False).logits[0, -1]
            sequence.append(int(logits.argmax()))
            logprobs.append(float(torch.log_softmax(logits.float(), -1)[sequence[-1]]))
            if sequence[-1] == eos:
                break
    return sequence[len(prompt):], logprobs


def test_rows_joining_and_leaving_decode_as_each_would_alone(
        tiny_model: Path, adapters: dict[str, Path]) -> None:
    from volt.agent.engine.backends import _Tokenizer

    tokenizer = _Tokenizer(tiny_model)
    torch.set_num_threads(1)
    engine = LoraAdapters(tiny_model, tokenizer.eos_id)
    for name, path in adapters.items():
        engine.load(name, path)
    say = tokenizer.encode_chat([("user", "Say it.")])
    other = tokenizer.encode_chat([("user", "Tell me about Volt, please.")])
    plan = [("a", say, 20), ("b", say, 14), ("a", other, 9), ("b", other, 20)]
    got: dict[int, list[int]] = {i: [] for i in range(len(plan))}
    logprobs: dict[int, list[float]] = {i: [] for i in range(len(plan))}
    done = {i: threading.Event() for i in range(len(plan))}

    def deliver(index: int):  # type: ignore[no-untyped-def]
        def take(step: Step) -> None:
            assert step.error is None, step.error
            got[index].extend(step.tokens)
            logprobs[index].extend(lp.logprob or 0.0 for lp in step.logprobs)
            if step.finished:
                done[index].set()
        return take

    def start(index: int) -> None:
        adapter, prompt, tokens = plan[index]
        engine.start(f"r{index}", adapter, prompt,
                     SamplingParams(max_new_tokens=tokens, temperature=0.0,
                                    top_logprobs=0), deliver(index))

    try:
        start(0)
        while len(got[0]) < 3:  # the others join a cache that holds rows already
            threading.Event().wait(0.005)
        start(1)
        start(2)
        assert done[2].wait(120)  # a row leaves while others go on
        start(3)  # and one joins after it left
        for event in done.values():
            assert event.wait(120)
    finally:
        engine.close()
    for index, (adapter, prompt, tokens) in enumerate(plan):
        expected, expected_logprobs = reference(tiny_model, adapters[adapter], prompt, tokens,
                                                tokenizer.eos_id)
        assert got[index] == expected, index
        assert logprobs[index] == pytest.approx(expected_logprobs, abs=1e-4), index
    # The two adapters really differ (rows went through their own one).
    assert got[0] != got[1]
