"""LoRA fine-tuning of a served model, as the agent's child process.

``python -m volt.finetune.trainer --base DIR --data FILE --out DIR ...`` trains
a peft LoRA adapter on a chat JSONL file (``dataset``): each assistant turn
is one sequence, the conversation before it rendered with the model's chat
template exactly as the engine renders a request, and only the reply's tokens
(and the end-of-turn token) in the loss — so the tuned model learns to say the
reply to that conversation, and nothing about the prompt.

It reports on stdout, one JSON object per line (the agent turns them into the
job's events): ``start`` (steps, examples, tokens per epoch), ``step`` (step,
epoch, train loss, tokens so far), ``checkpoint`` (after each epoch, a saved
adapter), ``done`` (the final adapter) or ``cancelled``. SIGTERM stops it
within a step. It never prints or logs a line of the data. On a host with
CUDA the same code trains on the GPU.

A checkpoint holds what it takes to go on from it, not only the adapter: the
optimizer's state and the step, epoch and token counts (``trainer_state.pt``).
``--resume CHECKPOINT`` starts from one — the adapter's weights, the optimizer's
moments, the same shuffled order for the epochs left (the order is drawn from
the seed, epoch by epoch, so the epochs done are drawn again and skipped) — and
ends with the adapter the run would have made had it not stopped.
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

from volt.finetune.dataset import InvalidFile, parse

TARGET_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
"""LoRA on every projection of a Llama-architecture block (vLLM serves these)."""
IGNORE = -100
KEEP_CHECKPOINTS = 3
STATE_FILE = "trainer_state.pt"
"""As OpenAI: the checkpoints of the last epochs are kept (the agent deletes older
ones; the API lists these)."""


def _emit(event: str, **fields: Any) -> None:
    sys.stdout.write(json.dumps({"event": event, **fields}) + "\n")
    sys.stdout.flush()


def sequences(examples: list[Any], encode_chat: Any, encode: Any, eos_id: int,
              max_tokens: int) -> list[tuple[list[int], list[int]]]:
    """(input ids, labels) per assistant turn: the prompt as the engine renders
    it, then the reply and end-of-turn; labels mask the prompt."""
    out = []
    for example in examples:
        history: list[tuple[str, str]] = []
        for message in example.messages:
            if message.role == "assistant" and message.weight:
                prompt = encode_chat(history)
                reply = [*encode(message.content), eos_id]
                ids = (prompt + reply)[:max_tokens]
                labels = ([IGNORE] * len(prompt) + reply)[:max_tokens]
                if any(label != IGNORE for label in labels):
                    out.append((ids, labels))
            history.append((message.role, message.content))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="volt-trainer", description=__doc__)
    parser.add_argument("--base", type=Path, required=True, help="the base model's folder")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--validation", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=2e-3)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seq-tokens", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--resume", type=Path,
                        help="a checkpoint folder of this job to go on from")
    args = parser.parse_args(argv)

    stop = False

    def on_term(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    try:
        examples = parse(args.data.read_bytes())
        validation = parse(args.validation.read_bytes()) if args.validation else []
    except InvalidFile as exc:
        _emit("failed", error=f"training file: {exc}")
        return 1

    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    from volt.agent.engine.backends import _Tokenizer

    hf_logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    hf_logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = _Tokenizer(args.base)
    train = sequences(examples, tokenizer.encode_chat, tokenizer.encode, tokenizer.eos_id,
                      args.max_seq_tokens)
    held_out = sequences(validation, tokenizer.encode_chat, tokenizer.encode,
                         tokenizer.eos_id, args.max_seq_tokens)
    model: Any = AutoModelForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    model = model.to(device)
    pad_id = int(model.config.pad_token_id or 0)
    model = get_peft_model(model, LoraConfig(
        r=args.rank, lora_alpha=args.alpha, lora_dropout=0.0, bias="none",
        target_modules=list(TARGET_MODULES), task_type="CAUSAL_LM"))
    optimizer = torch.optim.AdamW((p for p in model.parameters() if p.requires_grad),
                                  lr=args.learning_rate)
    done_epochs, step, trained_tokens = 0, 0, 0
    if args.resume is not None:
        try:
            state = torch.load(args.resume / STATE_FILE, map_location=device, weights_only=True)
            weights = load_file(args.resume / "adapter_model.safetensors", device=device)
        except Exception as exc:  # torch and safetensors each raise their own kinds
            _emit("failed", error=f"the checkpoint cannot be read ({type(exc).__name__})")
            return 1
        set_peft_model_state_dict(model, weights)
        optimizer.load_state_dict(state["optimizer"])
        done_epochs, step = int(state["epoch"]), int(state["step"])
        trained_tokens = int(state["trained_tokens"])

    def batch_tensors(batch: list[tuple[list[int], list[int]]]) -> tuple[Any, Any, Any]:
        width = max(len(ids) for ids, _ in batch)
        ids = [seq + [pad_id] * (width - len(seq)) for seq, _ in batch]
        labels = [lab + [IGNORE] * (width - len(lab)) for _, lab in batch]
        mask = [[1] * len(seq) + [0] * (width - len(seq)) for seq, _ in batch]
        return (torch.tensor(ids, device=device), torch.tensor(labels, device=device),
                torch.tensor(mask, device=device))

    def validation_loss() -> float | None:
        if not held_out:
            return None
        model.eval()
        total = 0.0
        with torch.no_grad():
            for start in range(0, len(held_out), args.batch_size):
                ids, labels, mask = batch_tensors(held_out[start:start + args.batch_size])
                total += float(model(input_ids=ids, attention_mask=mask, labels=labels).loss)
        model.train()
        return float(total / max(1, -(-len(held_out) // args.batch_size)))

    rng = random.Random(args.seed)
    per_epoch = -(-len(train) // args.batch_size)
    tokens_per_epoch = sum(len(ids) for ids, _ in train)
    _emit("start", total_steps=per_epoch * args.epochs, examples=len(examples),
          sequences=len(train), tokens_per_epoch=tokens_per_epoch, device=device,
          step=step, resumed=args.resume is not None)
    started = time.perf_counter()
    model.train()
    for epoch in range(1, args.epochs + 1):
        order = list(train)
        rng.shuffle(order)
        if epoch <= done_epochs:
            continue  # trained before the checkpoint: only its draw of the order is needed
        for start in range(0, len(order), args.batch_size):
            if stop:
                _emit("cancelled", step=step)
                return 0
            batch = order[start:start + args.batch_size]
            ids, labels, mask = batch_tensors(batch)
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            step += 1
            trained_tokens += sum(len(seq) for seq, _ in batch)
            _emit("step", step=step, epoch=epoch, loss=round(float(loss.detach()), 6),
                  tokens=trained_tokens, elapsed_s=round(time.perf_counter() - started, 3))
        checkpoint = args.out / "checkpoints" / f"step-{step}"
        model.save_pretrained(checkpoint)
        torch.save({"optimizer": optimizer.state_dict(), "epoch": epoch, "step": step,
                    "trained_tokens": trained_tokens}, checkpoint / STATE_FILE)
        _emit("checkpoint", step=step, epoch=epoch, path=str(checkpoint),
              valid_loss=validation_loss())
    final = args.out / "adapter"
    model.save_pretrained(final)
    _emit("done", step=step, trained_tokens=trained_tokens, path=str(final),
          elapsed_s=round(time.perf_counter() - started, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
