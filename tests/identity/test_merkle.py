"""The Merkle tree against the RFC 9162 definitions written out directly."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from volt.identity.merkle import (
    EMPTY_ROOT,
    Frontier,
    consistency_proof,
    inclusion_proof,
    leaf_hash,
    node_hash,
    root,
    verify_consistency,
    verify_inclusion,
)


def mth(leaves: list[bytes]) -> bytes:
    """MTH, §2.1.1, as the RFC writes it."""
    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return leaf_hash(leaves[0])
    k = 1
    while k * 2 < n:
        k *= 2
    return node_hash(mth(leaves[:k]), mth(leaves[k:]))


def path(m: int, leaves: list[bytes]) -> list[bytes]:
    """PATH, §2.1.3.1."""
    n = len(leaves)
    if n == 1:
        return []
    k = 1
    while k * 2 < n:
        k *= 2
    if m < k:
        return [*path(m, leaves[:k]), mth(leaves[k:])]
    return [*path(m - k, leaves[k:]), mth(leaves[:k])]


def subproof(m: int, leaves: list[bytes], complete: bool) -> list[bytes]:
    """SUBPROOF, §2.1.4.1."""
    n = len(leaves)
    if m == n:
        return [] if complete else [mth(leaves)]
    k = 1
    while k * 2 < n:
        k *= 2
    if m <= k:
        return [*subproof(m, leaves[:k], complete), mth(leaves[k:])]
    return [*subproof(m - k, leaves[k:], False), mth(leaves[:k])]


class Log:
    """A log built the way the audit writer builds it: a frontier and stored nodes."""

    def __init__(self, leaves: list[bytes]) -> None:
        self.nodes: dict[tuple[int, int], bytes] = {}
        self.frontier = Frontier()
        for leaf in leaves:
            for level, position, value in self.frontier.append(leaf_hash(leaf)):
                self.nodes[(level, position)] = value

    def node(self, level: int, position: int) -> bytes:
        return self.nodes[(level, position)]


LEAVES = [f"event {i}".encode() for i in range(70)]


def test_roots_match_the_definition_for_every_size() -> None:
    assert root(Log([]).node, 0) == EMPTY_ROOT
    for size in range(1, len(LEAVES) + 1):
        log = Log(LEAVES[:size])
        assert root(log.node, size) == mth(LEAVES[:size]) == log.frontier.root()


def test_a_frontier_reloaded_from_stored_nodes_continues_the_same_tree() -> None:
    log = Log(LEAVES[:37])
    again = Frontier.load(log.node, 37)
    for leaf in LEAVES[37:]:
        again.append(leaf_hash(leaf))
    assert again.root() == mth(LEAVES)


def test_inclusion_proofs_match_the_definition_and_verify() -> None:
    log = Log(LEAVES)
    for size in (1, 2, 3, 7, 8, 9, 31, 64, 70):
        expected_root = mth(LEAVES[:size])
        for index in range(size):
            proof = inclusion_proof(log.node, index, size)
            assert proof == path(index, LEAVES[:size])
            assert verify_inclusion(index, size, leaf_hash(LEAVES[index]), proof, expected_root)


def test_consistency_proofs_match_the_definition_and_verify() -> None:
    log = Log(LEAVES)
    for second in (1, 2, 5, 8, 13, 64, 70):
        for first in range(1, second + 1):
            proof = consistency_proof(log.node, first, second)
            assert proof == subproof(first, LEAVES[:second], True)
            assert verify_consistency(first, second, mth(LEAVES[:first]),
                                      mth(LEAVES[:second]), proof)


@given(st.integers(1, 70), st.data())
def test_any_tampering_fails_inclusion(size: int, data: st.DataObject) -> None:
    log = Log(LEAVES)
    index = data.draw(st.integers(0, size - 1))
    proof = inclusion_proof(log.node, index, size)
    good_root = mth(LEAVES[:size])
    assert not verify_inclusion(index, size, leaf_hash(b"edited"), proof, good_root)
    if size > 1:
        other = data.draw(st.integers(0, size - 1).filter(lambda i: i != index))
        # The same event claimed at another position (a reordering).
        assert not verify_inclusion(other, size, leaf_hash(LEAVES[index]), proof, good_root)
    if proof:
        spot = data.draw(st.integers(0, len(proof) - 1))
        broken = list(proof)
        broken[spot] = hashlib.sha256(broken[spot]).digest()
        assert not verify_inclusion(index, size, leaf_hash(LEAVES[index]), broken, good_root)
        assert not verify_inclusion(index, size, leaf_hash(LEAVES[index]), proof[:-1],
                                    good_root)


@given(st.integers(1, 69), st.data())
def test_a_rewritten_history_fails_consistency(first: int, data: st.DataObject) -> None:
    second = data.draw(st.integers(first + 1, 70))
    forged = list(LEAVES[:second])
    victim = data.draw(st.integers(0, first - 1))
    forged[victim] = b"rewritten"
    log = Log(forged)
    proof = consistency_proof(log.node, first, second)
    assert not verify_consistency(first, second, mth(LEAVES[:first]), mth(forged), proof)


@pytest.mark.parametrize(("first", "second"), [(0, 5), (5, 5)])
def test_trivial_consistency(first: int, second: int) -> None:
    assert verify_consistency(first, second, mth(LEAVES[:first]), mth(LEAVES[:second]), [])
