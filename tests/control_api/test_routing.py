"""The API's routing view gives the same decisions as the full policy."""

from __future__ import annotations

import itertools
import random

import pytest

from volt.control_api.errors import ModelNotFound, ServiceUnavailable
from volt.control_api.routing import Router
from volt.placement import DEFAULT_POLICY, PlacementQuery
from volt.wire import EngineLoad, ModelCard, NodeView, PlacementView

METROS = ("fra", "ams", "par")


def fleet(seed: int) -> list[NodeView]:
    rng = random.Random(seed)
    return [
        NodeView(node_id=f"n{i}", metro=rng.choice(METROS), tier=rng.choice(["std", "pro"]),
                 models=rng.sample(["a", "b", "c"], rng.randint(1, 2)),
                 state=rng.choice(["ready", "ready", "ready", "lost", "not_ready"]),
                 load=EngineLoad(running=(busy := rng.randint(0, 3))),
                 inflight_by_replica={"other": busy} if busy else {})
        for i in range(40)
    ]


def router_for(nodes: list[NodeView]) -> Router:
    router = Router()
    router.apply(PlacementView(scheduler_id="s", seq=1, nodes=nodes,
                               models=[ModelCard(id=m, created=0) for m in "abc"]))
    return router


@pytest.mark.parametrize("seed", range(5))
def test_indexed_routing_picks_among_exactly_the_policys_best(seed: int) -> None:
    nodes = fleet(seed)
    router = router_for(nodes)
    metro_sets = [None, *(frozenset(c) for r in (1, 2) for c in itertools.combinations(METROS, r))]
    for model, metros, tier in itertools.product("abc", metro_sets, [None, "std", "pro"]):
        query = PlacementQuery(model=model, metros=metros, tier=tier)
        full = DEFAULT_POLICY.place(query, nodes)
        if full.node is None:
            with pytest.raises(ServiceUnavailable):
                router.place(query)
            continue
        best = max(full.scores.values())
        winners = {node_id for node_id, score in full.scores.items() if score == best}
        assert router.place(query).node_id in winners


def test_unknown_model_is_404_and_known_without_pods_is_503() -> None:
    router = router_for([])
    with pytest.raises(ModelNotFound):
        router.model("zzz")
    router.model("a")
    with pytest.raises(ServiceUnavailable):
        router.place(PlacementQuery(model="a"))
