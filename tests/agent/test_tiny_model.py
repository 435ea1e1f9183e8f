from __future__ import annotations

import hashlib
from pathlib import Path

from transformers import AutoTokenizer

from volt.agent.engine.tiny_model import MODEL_ID, build, render_chatml


def _digests(directory: Path) -> dict[str, str]:
    return {
        path.name: hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.iterdir())
    }


def test_every_build_writes_identical_bytes(tiny_model: Path, tmp_path: Path) -> None:
    again = build(tmp_path / MODEL_ID)
    assert _digests(again) == _digests(tiny_model)


def test_it_is_tiny(tiny_model: Path) -> None:
    weights = (tiny_model / "model.safetensors").stat().st_size
    assert 1_000_000 < weights < 2_000_000


def test_fast_prompt_rendering_matches_the_chat_template(tiny_model: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    conversation = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there, ünïcödé ✓"},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "Again"},
    ]
    templated = tokenizer.apply_chat_template(conversation, add_generation_prompt=True,
                                              tokenize=False)
    assert render_chatml([(m["role"], m["content"]) for m in conversation]) == templated
