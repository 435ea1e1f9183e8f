"""The format of Volt API keys, checked without touching the store.

::

    volt_sk_live_ 4Xb9TQ2mK7pZ  9fK2...(32 chars)...  0aZ3kQ
    └─ prefix ──┘ └─ key id ─┘  └──── secret ────┘  └ CRC32 ┘

GitHub's token format is the model: a prefix that names what the string is
(so secret scanners can find a leaked key, and ``volt_sk_test_`` keys are told
apart from live ones at a glance), random base62 characters, and a CRC32 of
everything before it, in base62. A mistyped or truncated key fails the
checksum and is refused before any lookup.

Unlike GitHub's, the key also carries its own id: the store is looked up by
id, which is not secret, and the secret is then compared (as a keyed hash) in
constant time. A lookup keyed by the secret's hash would make the index's
timing depend on the secret.
"""

from __future__ import annotations

import secrets
import zlib
from dataclasses import dataclass
from typing import Literal

Mode = Literal["live", "test"]
PREFIXES: dict[str, Mode] = {"volt_sk_live_": "live", "volt_sk_test_": "test"}
ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
ID_CHARS = 12
SECRET_CHARS = 32  # 190 bits
CHECKSUM_CHARS = 6
BODY_CHARS = ID_CHARS + SECRET_CHARS + CHECKSUM_CHARS
KEY_ID_PREFIX = "key_"
_CHARSET = frozenset(ALPHABET)


class MalformedKey(ValueError):
    """Not a Volt API key: wrong prefix, length, characters or checksum."""


@dataclass(frozen=True, slots=True)
class ParsedKey:
    mode: Mode
    key_id: str
    """``key_`` and the id characters: how the store knows the key."""
    secret: str


def _base62(value: int, width: int) -> str:
    out = []
    for _ in range(width):
        value, digit = divmod(value, 62)
        out.append(ALPHABET[digit])
    return "".join(reversed(out))


def _checksum(text: str) -> str:
    return _base62(zlib.crc32(text.encode()), CHECKSUM_CHARS)


def _random(chars: int) -> str:
    return "".join(secrets.choice(ALPHABET) for _ in range(chars))


def new_key_id() -> str:
    return KEY_ID_PREFIX + _random(ID_CHARS)


def format_key(mode: Mode, key_id: str, secret: str) -> str:
    prefix = f"volt_sk_{mode}_"
    body = prefix + key_id.removeprefix(KEY_ID_PREFIX) + secret
    return body + _checksum(body)


def new_key(mode: Mode = "live", key_id: str | None = None) -> tuple[str, ParsedKey]:
    """A fresh key: (the string shown once, its parts)."""
    key_id = key_id or new_key_id()
    secret = _random(SECRET_CHARS)
    return format_key(mode, key_id, secret), ParsedKey(mode, key_id, secret)


def parse_key(text: str) -> ParsedKey:
    """The key's parts, or ``MalformedKey``. Costs a CRC32; never a lookup."""
    mode = PREFIXES.get(text[:13])
    if mode is None:
        raise MalformedKey("not a Volt API key (they start with volt_sk_live_ or volt_sk_test_)")
    body = text[13:]
    if len(body) != BODY_CHARS or not _CHARSET.issuperset(body):
        raise MalformedKey("this API key is truncated or mistyped (wrong length or characters)")
    if _checksum(text[: -CHECKSUM_CHARS]) != body[-CHECKSUM_CHARS:]:
        raise MalformedKey("this API key is mistyped (its checksum does not match)")
    return ParsedKey(mode, KEY_ID_PREFIX + body[:ID_CHARS],
                     body[ID_CHARS: ID_CHARS + SECRET_CHARS])


def display_prefix(key: str) -> str:
    """What listings show of a key: its prefix and key id, never the secret."""
    return key[: 13 + ID_CHARS] + "…"
