"""Training files: OpenAI's chat format, one JSON object per line.

``{"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}``,
at least one assistant message (what the model learns to say). The API checks
a file line by line at upload and names the first bad line; the trainer parses
it again with the same code before it trains (a file is never trusted twice
over the bus). Nothing here logs a line's content: it is customer data.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

MAX_LINE_BYTES = 1 << 20
ROLES = ("system", "user", "assistant")


class Message(msgspec.Struct, forbid_unknown_fields=False):
    role: Literal["system", "user", "assistant"]
    content: str
    weight: Annotated[int, msgspec.Meta(ge=0, le=1)] = 1
    """OpenAI's per-message weight: 0 leaves an assistant turn out of the loss."""


class Example(msgspec.Struct, forbid_unknown_fields=False):
    messages: Annotated[list[Message], msgspec.Meta(min_length=1)]


class InvalidFile(Exception):
    """The file cannot be trained on; ``line`` is 1-based (0: the whole file)."""

    def __init__(self, message: str, line: int = 0) -> None:
        super().__init__(message)
        self.line = line


_decoder = msgspec.json.Decoder(Example)


def parse(data: bytes, *, max_examples: int = 1_000_000) -> list[Example]:
    """Every example in ``data``, or ``InvalidFile`` naming the first bad line."""
    if not data.strip():
        raise InvalidFile("The file is empty: it needs at least one example.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = data[: exc.start].count(b"\n") + 1
        raise InvalidFile(f"Line {bad} is not UTF-8 text (the file must be JSONL).", bad) \
            from None
    examples: list[Example] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            raise InvalidFile(f"Line {number} is longer than {MAX_LINE_BYTES} bytes.", number)
        try:
            example = _decoder.decode(line)
        except msgspec.ValidationError as exc:
            raise InvalidFile(f"Line {number} is not a chat example: {exc}. Each line must be "
                              '{"messages": [{"role": ..., "content": ...}, ...]}.',
                              number) from None
        except (msgspec.DecodeError, RecursionError):
            raise InvalidFile(f"Line {number} is not valid JSON (the file must be JSONL: one "
                              "JSON object per line).", number) from None
        if not any(m.role == "assistant" and m.weight for m in example.messages):
            raise InvalidFile(f"Line {number} has no assistant message to learn from.", number)
        examples.append(example)
        if len(examples) > max_examples:
            raise InvalidFile(f"The file has more than {max_examples} examples.", number)
    return examples
