"""The trainer as the agent runs it (a child process, JSON lines on stdout),
on the tiny model: a run resumed from a checkpoint ends with the very adapter
an uninterrupted run makes — the optimizer's moments and the shuffled order
come back with it — and a checkpoint that cannot be read fails the run in
words, not with a traceback."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file

from volt.finetune.trainer import STATE_FILE

EXAMPLES = [{"messages": [{"role": "user", "content": f"Question {i}?"},
                          {"role": "assistant", "content": f"Answer number {i}."}]}
            for i in range(6)]


def train(tiny_model: Path, data: Path, out: Path, *extra: str) -> list[dict[str, Any]]:
    run = subprocess.run(
        [sys.executable, "-m", "volt.finetune.trainer", "--base", str(tiny_model),
         "--data", str(data), "--out", str(out), "--epochs", "3", "--batch-size", "2",
         "--learning-rate", "0.01", "--seed", "7", *extra],
        capture_output=True, text=True, timeout=300, check=False)
    assert "Traceback" not in run.stderr, run.stderr
    return [json.loads(line) for line in run.stdout.splitlines()]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(example) + "\n" for example in EXAMPLES))
    return path


def test_a_resumed_run_ends_with_the_adapter_of_an_uninterrupted_one(
        tiny_model: Path, data: Path, tmp_path: Path) -> None:
    whole = train(tiny_model, data, tmp_path / "whole")
    assert whole[-1]["event"] == "done"
    checkpoints = [line for line in whole if line["event"] == "checkpoint"]
    assert [c["step"] for c in checkpoints] == [3, 6, 9]
    first = Path(checkpoints[0]["path"])
    assert (first / STATE_FILE).is_file()

    resumed = train(tiny_model, data, tmp_path / "resumed", "--resume", str(first))
    start = resumed[0]
    assert start["event"] == "start"
    assert start["resumed"]
    assert start["step"] == 3
    steps = [line["step"] for line in resumed if line["event"] == "step"]
    assert steps == [4, 5, 6, 7, 8, 9]  # only the epochs left
    done = resumed[-1]
    assert done["event"] == "done"
    assert done["trained_tokens"] == whole[-1]["trained_tokens"]

    expected = load_file(Path(whole[-1]["path"]) / "adapter_model.safetensors")
    got = load_file(Path(done["path"]) / "adapter_model.safetensors")
    assert expected.keys() == got.keys()
    for name, tensor in expected.items():
        assert (got[name] - tensor).abs().max().item() <= 1e-6, name
    # And the resumed run's losses are the uninterrupted run's, step for step.
    losses = {line["step"]: line["loss"] for line in whole if line["event"] == "step"}
    for line in resumed:
        if line["event"] == "step":
            assert line["loss"] == pytest.approx(losses[line["step"]], abs=1e-5)


def test_a_checkpoint_that_cannot_be_read_fails_the_run_in_words(
        tiny_model: Path, data: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / STATE_FILE).write_bytes(b"not a checkpoint")
    lines = train(tiny_model, data, tmp_path / "out", "--resume", str(broken))
    assert lines[-1]["event"] == "failed"
    assert "checkpoint" in lines[-1]["error"]
