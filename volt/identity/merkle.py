"""RFC 9162 (Certificate Transparency 2.0) Merkle trees: hashes, proofs, checks.

Leaves are hashed ``SHA-256(0x00 || leaf)`` and interior nodes
``SHA-256(0x01 || left || right)``, so a leaf can never pass for a node. The
tree of ``n`` leaves splits at the largest power of two below ``n``
(§2.1.1). Proofs are built from the hashes of *complete* subtrees (``level``,
``position``: leaves ``[position·2^level, (position+1)·2^level)``), which an
append-only log can store once and never change; any range the RFC's
recursion asks for is a few of them folded together.

The checks (``verify_inclusion``, ``verify_consistency``) are the RFC's
algorithms (§2.1.3.2, §2.1.4.2), written from its text; tests compare them
with a direct recursive definition and try every tampering.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

NodeHash = Callable[[int, int], bytes]
"""(level, position) -> the hash of that complete subtree."""

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(leaf: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def _split(n: int) -> int:
    """The largest power of two strictly below ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def _complete_ranges(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) as aligned complete subtrees, left to right: (level, position)."""
    ranges = []
    while start < end:
        level = (start & -start).bit_length() - 1 if start else (end - start).bit_length() - 1
        while (1 << level) > end - start:
            level -= 1
        ranges.append((level, start >> level))
        start += 1 << level
    return ranges


def range_hash(nodes: NodeHash, start: int, end: int) -> bytes:
    """MTH(D[start:end]) for the ranges the RFC's recursion produces (``start``
    aligned to a power of two at least ``end - start``)."""
    if start == end:
        return EMPTY_ROOT
    hashes = [nodes(level, position) for level, position in _complete_ranges(start, end)]
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


def root(nodes: NodeHash, size: int) -> bytes:
    return range_hash(nodes, 0, size)


def inclusion_proof(nodes: NodeHash, index: int, size: int) -> list[bytes]:
    """PATH(index, D[0:size]) (§2.1.3.1), leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size}")
    proof: list[bytes] = []
    start, end = 0, size
    while end - start > 1:
        k = _split(end - start)
        if index - start < k:
            proof.append(range_hash(nodes, start + k, end))
            end = start + k
        else:
            proof.append(range_hash(nodes, start, start + k))
            start += k
    proof.reverse()
    return proof


def consistency_proof(nodes: NodeHash, first: int, second: int) -> list[bytes]:
    """PROOF(first, D[0:second]) (§2.1.4.1)."""
    if not 0 < first <= second:
        raise ValueError(f"no consistency proof from {first} to {second}")
    proof: list[bytes] = []
    start, end, m, complete = 0, second, first, True
    while True:
        n = end - start
        if m == n:
            if not complete:
                proof.append(range_hash(nodes, start, end))
            break
        k = _split(n)
        if m <= k:
            proof.append(range_hash(nodes, start + k, end))
            end = start + k
        else:
            proof.append(range_hash(nodes, start, start + k))
            start, m, complete = start + k, m - k, False
    proof.reverse()
    return proof


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes],
                     expected_root: bytes) -> bool:
    """§2.1.3.2; ``leaf`` is the leaf's hash."""
    if index >= size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    return sn == 0 and r == expected_root


def verify_consistency(first: int, second: int, first_root: bytes, second_root: bytes,
                       proof: Sequence[bytes]) -> bool:
    """§2.1.4.2: the tree of ``second`` leaves extends the tree of ``first``."""
    if first == second:
        return not proof and first_root == second_root
    if first == 0:
        return not proof  # everything extends the empty tree
    if first > second or not proof:
        return False
    path = list(proof)
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            if not fn & 1:
                while not fn & 1 and fn != 0:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    return fr == first_root and sr == second_root and sn == 0


class Frontier:
    """The right edge of an append-only tree: one complete subtree hash per set
    bit of its size. Appending a leaf yields the nodes it completes, which the
    log stores; the root needs only the frontier."""

    def __init__(self, size: int = 0, edge: Sequence[bytes] = ()) -> None:
        self.size = size
        self.edge = list(edge)
        """Complete subtree hashes, largest (leftmost) first."""
        if len(self.edge) != bin(size).count("1"):
            raise ValueError("the frontier does not match the tree size")

    @classmethod
    def load(cls, nodes: NodeHash, size: int) -> Frontier:
        return cls(size, [nodes(level, position) for level, position
                          in _complete_ranges(0, size)])

    def append(self, leaf: bytes) -> list[tuple[int, int, bytes]]:
        """Add a leaf's hash; returns the nodes completed: (level, position, hash)."""
        index = self.size
        created = [(0, index, leaf)]
        current, level, position = leaf, 0, index
        while position & 1:
            current = node_hash(self.edge.pop(), current)
            level, position = level + 1, position >> 1
            created.append((level, position, current))
        self.edge.append(current)
        self.size += 1
        return created

    def root(self) -> bytes:
        if not self.edge:
            return EMPTY_ROOT
        result = self.edge[-1]
        for left in reversed(self.edge[:-1]):
            result = node_hash(left, result)
        return result
