from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from volt.testing import Cluster

HEARTBEAT_S = 0.3


@pytest.fixture(scope="module")
def two_metros(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Cluster]:
    """fra-1 in metro fra and ams-1 in metro ams, behind one API."""
    with Cluster(tmp_path_factory.mktemp("cluster"), heartbeat_interval_s=HEARTBEAT_S,
                 model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.add_agent("ams-1", metro="ams")
        cluster.start_api()
        cluster.wait_routable(metro="fra")
        cluster.wait_routable(metro="ams")
        yield cluster


@pytest.fixture
def client(two_metros: Cluster) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=two_metros.base_url, api_key=two_metros.api_key,
                       max_retries=0, timeout=60) as sdk:
        yield sdk
