"""Where a request's context probably already is: prompt prefixes and sessions.

Prefix index. A pod that recently served a prompt still holds its KV cache
(vLLM's and the CPU engine's prefix caching), so a request sharing a long
prefix is cheaper there. Each API replica keeps an approximate index: the
prompt is cut into fixed-size blocks and hashed as a chain (block i's hash
covers blocks 0..i, as vLLM hashes KV blocks), and each hash remembers the pod
that last served it. A new request's match on a pod is the share of its
blocks found there, from the start. Bounded LRU; approximate by design (no
KV events from the engines yet): a wrong guess costs a cache miss, never a
wrong answer.

Sessions. A request naming a session (``volt.session``, or OpenAI's ``user``)
prefers the pod that last served that session; if that pod leaves placement
the request goes elsewhere and the session follows it.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

BLOCK_CHARS = 256
"""About 64 tokens of English per block."""


class LruMap:
    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: OrderedDict[bytes | str, str] = OrderedDict()

    def get(self, key: bytes | str) -> str | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: bytes | str, value: str) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)


def prefix_blocks(prompt: str, block_chars: int = BLOCK_CHARS) -> list[bytes]:
    """Chained hashes of the prompt's whole blocks (a partial last block is left out)."""
    hashes = []
    chain = hashlib.blake2b(digest_size=16)
    data = prompt.encode()
    for start in range(0, len(data) - block_chars + 1, block_chars):
        chain.update(data[start: start + block_chars])
        hashes.append(chain.copy().digest())
    return hashes


class AffinityIndex:
    def __init__(self, *, prefix_capacity: int = 100_000, session_capacity: int = 100_000) -> None:
        self._prefixes = LruMap(prefix_capacity)
        self._sessions = LruMap(session_capacity)

    def matches(self, blocks: list[bytes]) -> dict[str, float]:
        """For each pod, the share of ``blocks`` it served last, counted from the start."""
        if not blocks:
            return {}
        longest: dict[str, int] = {}
        for depth, block in enumerate(blocks, start=1):
            node = self._prefixes.get(block)
            if node is None:
                break
            longest[node] = depth
        return {node: depth / len(blocks) for node, depth in longest.items()}

    def served(self, blocks: list[bytes], node_id: str, session: str | None) -> None:
        for block in blocks:
            self._prefixes.put(block, node_id)
        if session:
            self._sessions.put(session, node_id)

    def session_node(self, session: str | None) -> str | None:
        return self._sessions.get(session) if session else None
