"""``volt bench serve`` against a real Volt (instant engine): what it reports is right."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop

from volt.bench.loadgen import Target
from volt.bench.serve import (
    LengthError,
    Lengths,
    Slo,
    Sweep,
    request_bodies,
    run_serve,
    run_sweep,
)
from volt.testing import Cluster


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("bench"), model_cache=tiny_model,
                 engine_mode="instant") as cluster:
        cluster.add_agent("bench-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        yield cluster


def volt(cluster: Cluster, key: str | None = None) -> Target:
    return Target("volt", cluster.base_url, api_key=key or cluster.api_key)


@pytest.mark.parametrize(("text", "low", "high"), [
    ("64", 64, 64), ("uniform:10:20", 10, 20), ("normal:50:5", 1, 200),
])
def test_lengths_sample_within_their_distribution(text: str, low: int, high: int) -> None:
    lengths = Lengths.parse(text)
    rng = random.Random(1)
    values = [lengths.sample(rng) for _ in range(500)]
    assert low <= min(values) <= max(values) <= high
    assert str(Lengths.parse(str(lengths))) == str(lengths)


@pytest.mark.parametrize("text", ["", "uniform:9", "uniform:20:10", "normal:x:1", "zipf:1:2"])
def test_bad_length_specs_are_refused_clearly(text: str) -> None:
    with pytest.raises(LengthError):
        Lengths.parse(text)


def test_the_same_seed_sends_the_same_requests() -> None:
    def bodies(seed: int) -> list[bytes]:
        return request_bodies("m", "chat", 20, Lengths.parse("uniform:1:50"),
                              Lengths.parse("uniform:1:9"), seed)

    assert bodies(3) == bodies(3)
    assert bodies(3) != bodies(4)


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_tokens_and_throughput_match_what_was_asked(cluster: Cluster, endpoint: str) -> None:
    output = Lengths.parse("uniform:4:40")
    sweep = Sweep(model="volt-tiny", endpoint=endpoint, rates=(200.0,), concurrencies=(),
                  requests=40, output=output, seed=5)
    [point] = uvloop.run(run_sweep([volt(cluster)], sweep))
    assert point.failed == 0
    assert point.requests == 40
    # The instant engine makes exactly max_tokens: the server's usage says so.
    asked = sum(json.loads(b)["max_tokens"] for b in request_bodies(
        "volt-tiny", endpoint, 40, sweep.prompt, output, 5))
    assert point.output_token_throughput * point.duration_s == pytest.approx(asked, rel=0.01)
    assert 0 < point.ttft_ms["p50"] <= point.e2e_ms["p50"] <= point.e2e_ms["p99"]


def test_failures_are_counted_with_their_reason(cluster: Cluster) -> None:
    sweep = Sweep(model="volt-tiny", concurrencies=(2,), requests=6, warmup=0)
    [point] = uvloop.run(run_sweep([volt(cluster, key="volt_sk_live_wrong")], sweep))
    assert point.failed == point.requests == 8  # at least 4 per client
    assert any("HTTP 401" in error for error in point.errors)


def test_goodput_counts_only_requests_within_the_slo(cluster: Cluster) -> None:
    def goodput(slo: Slo) -> tuple[float, float]:
        sweep = Sweep(model="volt-tiny", concurrencies=(4,), requests=20, slo=slo)
        [point] = uvloop.run(run_sweep([volt(cluster)], sweep))
        assert point.goodput is not None
        return point.goodput, point.request_throughput

    assert goodput(Slo(ttft_ms=1e-6))[0] == 0
    met, throughput = goodput(Slo(ttft_ms=60_000, e2e_ms=60_000))
    assert met == throughput


def test_results_go_to_json_and_a_png(cluster: Cluster, tmp_path: Path) -> None:
    sweep = Sweep(model="volt-tiny", concurrencies=(1, 4), requests=16)
    run_serve([volt(cluster)], sweep, json_path=tmp_path / "r.json", plot_path=tmp_path / "r.png")
    data = json.loads((tmp_path / "r.json").read_text())
    assert [p["load"] for p in data["points"]] == [1, 4]
    assert data["settings"]["output"] == "64"
    assert (tmp_path / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
