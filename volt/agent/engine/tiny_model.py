"""The tiny chat model the CPU engine serves, built locally from a fixed seed.

Volt downloads no weights at run time. Instead it builds ``volt-tiny``: a
Llama-architecture model (2 layers, hidden size 128, ~400k parameters, about
1.6 MB of fp32 safetensors) with a byte-level BPE tokenizer trained on text
that this module generates from a seeded PRNG, and a ChatML chat template. The
weights are random: the model exists to exercise the real serving path
(tokenizer, chat template, continuous batching, streaming, cancellation),
not to say anything useful.

Every build writes identical bytes (same seed, single-threaded training and
initialisation); ``tests/agent/test_tiny_model.py`` holds it to that.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from pathlib import Path

MODEL_ID = "volt-tiny"
SEED = 1234
VOCAB_SIZE = 1024
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
EOS_TOKEN = "<|im_end|>"
PAD_TOKEN = "<|endoftext|>"
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")


def render_chatml(messages: list[tuple[str, str]]) -> str:
    """The prompt ``CHAT_TEMPLATE`` renders, without a Jinja round trip.

    The engine renders every prompt; doing it in Python keeps that off the hot
    path. A test checks it against ``apply_chat_template``.
    """
    parts = [f"<|im_start|>{role}\n{content}<|im_end|>\n" for role, content in messages]
    parts.append("<|im_start|>assistant\n")
    return "".join(parts)


def training_corpus(seed: int = SEED, lines: int = 4000) -> list[str]:
    """English-looking text from a seeded PRNG: common words plus invented ones."""
    rng = random.Random(seed)
    syllables = "ka lo mi ne su ta ri vo ze qu an el is or um th st ch".split()
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(800)]
    words += (
        "the a of to and in is you that it for on with as are this be at have from or one "
        "had by word but not what all were we when your can said there use an each which she "
        "do how their if will up other about out many then them these so some her would make "
        "like him into time has look two more write go see number no way could people my than "
        "first water been call who its now find long down day did get come made may part"
    ).split()
    out = []
    for _ in range(lines):
        sentence = " ".join(rng.choice(words) for _ in range(rng.randint(4, 16)))
        out.append(sentence.capitalize() + rng.choice(".?!,"))
    return out


def is_built(model_dir: Path) -> bool:
    return all((model_dir / name).is_file() for name in _REQUIRED_FILES)


def build(model_dir: Path) -> Path:
    """Build the model into ``model_dir`` (atomically: a half-built model is never seen)."""
    # Heavy imports stay here: the API and scheduler never build models.
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_dir = model_dir.resolve()
    model_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{model_dir.name}-", dir=model_dir.parent))
    try:
        tokenizer = Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=VOCAB_SIZE,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tokenizer.train_from_iterator(training_corpus(), trainer=trainer)
        fast = PreTrainedTokenizerFast(
            tokenizer_object=tokenizer, eos_token=EOS_TOKEN, pad_token=PAD_TOKEN
        )
        fast.chat_template = CHAT_TEMPLATE
        fast.save_pretrained(staging)

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            torch.manual_seed(SEED)
            config = LlamaConfig(
                vocab_size=len(fast),
                hidden_size=128,
                intermediate_size=224,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,
                max_position_embeddings=4096,
                tie_word_embeddings=True,
                eos_token_id=fast.eos_token_id,
                pad_token_id=fast.pad_token_id,
                bos_token_id=None,
            )
            LlamaForCausalLM(config).save_pretrained(staging)
        finally:
            torch.set_num_threads(threads)
        if model_dir.exists():
            shutil.rmtree(model_dir)
        staging.rename(model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return model_dir


def ensure_built(model_dir: Path) -> Path:
    return model_dir if is_built(model_dir) else build(model_dir)
