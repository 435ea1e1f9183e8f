"""Lease placement: gang, topology-aware, best fit, and the books it keeps."""

from __future__ import annotations

import random

import pytest

from volt.placement.gpus import GpuNode, GpuPool, GpuRequest, Unplaceable


def fleet(*nodes: tuple[str, str, str], gpus: int = 8, tier: str = "standard",
          model: str = "H100") -> GpuPool:
    """(node id, NVLink domain, rack) each, all in metro fra."""
    pool = GpuPool()
    for node_id, domain, rack in nodes:
        pool.set_node(GpuNode(node_id=node_id, metro="fra", tier=tier, gpu_model=model,
                              gpus=gpus, nvlink_domain=domain, rack=rack))
    return pool


def ask(count: int, **kw: str) -> GpuRequest:
    return GpuRequest(gpu_model=kw.get("model", "H100"), count=count,
                      metro=kw.get("metro", "fra"), tier=kw.get("tier"))


def take(pool: GpuPool, count: int) -> list[tuple[str, int]]:
    placement = pool.place(ask(count))
    pool.allocate(placement)
    return list(placement.nodes)


def test_a_small_lease_fills_a_used_node_before_breaking_a_whole_one() -> None:
    pool = fleet(("a", "d1", "r1"), ("b", "d1", "r1"))
    first = take(pool, 6)
    (used, _), = first
    # 2 fit beside the 6; best fit puts them there, not on the whole node.
    assert take(pool, 2) == [(used, 2)]
    other = "b" if used == "a" else "a"
    assert take(pool, 3) == [(other, 3)]
    assert pool.free(used) == 0
    assert pool.free(other) == 5


def test_gang_all_or_nothing_on_one_node() -> None:
    pool = fleet(("a", "", ""), ("b", "", ""))
    take(pool, 5)
    take(pool, 5)
    # 6 free GPUs in all, 3 on each node: a 4-GPU lease does not fit anywhere.
    with pytest.raises(Unplaceable) as refused:
        pool.place(ask(4))
    assert refused.value.code == "insufficient_capacity"
    assert pool.free("a") == 3
    assert pool.free("b") == 3


def test_big_leases_take_whole_nodes_in_one_nvlink_domain_then_one_rack() -> None:
    pool = fleet(("a1", "d1", "r1"), ("a2", "d1", "r1"), ("a3", "d1", "r1"),
                 ("b1", "d2", "r1"), ("b2", "d2", "r1"),
                 ("c1", "d3", "r2"))
    # 16 GPUs: the smallest domain with two whole nodes is d2.
    placement = pool.place(ask(16))
    assert placement.scope == "nvlink_domain"
    assert placement.nodes == (("b1", 8), ("b2", 8))
    pool.allocate(placement)
    # 32 GPUs: no domain has four whole nodes, and no rack either (r1 has three left).
    with pytest.raises(Unplaceable):
        pool.place(ask(32))
    pool.release(placement)
    # After release, rack r1 holds five whole nodes: 32 GPUs fit there, in one rack.
    big = pool.place(ask(32))
    assert big.scope == "rack"
    assert {node for node, _ in big.nodes} <= {"a1", "a2", "a3", "b1", "b2"}


def test_unknown_topology_never_joins_a_multi_node_lease() -> None:
    pool = fleet(("a", "", ""), ("b", "", ""))
    with pytest.raises(Unplaceable) as refused:
        pool.place(ask(16))
    assert refused.value.code == "insufficient_capacity"


def test_shapes_that_can_never_fit_say_so() -> None:
    pool = fleet(("a", "d1", "r1"), ("b", "d1", "r1"))
    for request, words in ((ask(12), "multiple of 8"), (ask(0), "at least 1"),
                           (ask(1, model="B200"), "no B200"),
                           (ask(1, metro="nyc"), "no H100 GPUs in nyc"),
                           (ask(1, tier="premium"), "tier premium")):
        with pytest.raises(Unplaceable) as refused:
            pool.place(request)
        assert refused.value.code == "invalid_shape"
        assert words in str(refused.value)


def test_tier_filters_and_unschedulable_nodes_are_skipped() -> None:
    pool = fleet(("a", "", ""), tier="standard")
    pool.set_node(GpuNode(node_id="p", metro="fra", tier="premium", gpu_model="H100", gpus=8))
    assert pool.place(ask(8, tier="premium")).nodes == (("p", 8),)
    pool.set_schedulable("p", False)
    with pytest.raises(Unplaceable):
        pool.place(ask(8, tier="premium"))
    assert pool.place(ask(8)).nodes == (("a", 8),)


def test_a_node_that_leaves_and_returns_keeps_its_leased_gpus_taken() -> None:
    pool = fleet(("a", "", ""))
    take(pool, 6)
    node = pool.node("a")
    assert node is not None
    pool.remove("a")
    pool.set_node(node)
    assert pool.free("a") == 2
    with pytest.raises(Unplaceable):
        pool.place(ask(3))


def test_availability_reports_totals_free_and_the_largest_lease_per_scope() -> None:
    pool = fleet(("a1", "d1", "r1"), ("a2", "d1", "r1"), ("b1", "d2", "r1"))
    # Three GPUs break a whole node: the one in the smaller domain (b1 in d2),
    # so d1 stays whole.
    assert take(pool, 3) == [("b1", 3)]
    (row,) = pool.availability()
    assert (row.total, row.free) == (24, 21)
    assert row.largest_on_node == 8
    assert row.largest_in_nvlink_domain == 16
    assert row.largest_in_rack == 16
    assert row.largest == 16


def test_best_fit_fragments_less_than_first_fit() -> None:
    """The property the benchmark measures, on a small seeded run."""
    rng = random.Random(7)
    nodes = [(f"n{i:03}", f"d{i // 4}", f"r{i // 16}") for i in range(64)]
    pool = fleet(*nodes)
    live = []
    for _ in range(400):
        if live and rng.random() < 0.45:
            pool.release(live.pop(rng.randrange(len(live))))
            continue
        try:
            placement = pool.place(ask(rng.choice((1, 1, 2, 4, 8))))
        except Unplaceable:
            continue
        pool.allocate(placement)
        live.append(placement)
    # Best fit keeps most free GPUs on whole nodes.
    assert pool.usable_by_whole_node() > 0.5
