from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from volt.testing import Cluster

HEARTBEAT_S = 0.3


@pytest.fixture(scope="session")
def two_metros(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Cluster]:
    """fra-1 in metro fra and ams-1 in metro ams, behind one API; the fleet
    also serves metro sin, where no node is up.

    One for the whole session: starting it takes ~25 s, and eight modules use
    it. So no test may stop, kill or reconfigure its processes (tests that do
    start a cluster of their own); state a test adds (orgs, keys, catalogs)
    has names of its own."""
    with Cluster(tmp_path_factory.mktemp("cluster"), heartbeat_interval_s=HEARTBEAT_S,
                 model_cache=tiny_model,
                 extra_env={"VOLT_SCHEDULER_METROS": "fra ams sin"}) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.add_agent("ams-1", metro="ams")
        cluster.start_api()  # uvicorn, the default
        cluster.start_api("api-hypercorn", server="hypercorn")
        for port in (cluster.api_port, cluster.api_port_of("api-hypercorn")):
            cluster.wait_routable(metro="fra", port=port)
            cluster.wait_routable(metro="ams", port=port)
        yield cluster


@pytest.fixture(params=["uvicorn", "hypercorn"])
def api_port(request: pytest.FixtureRequest, two_metros: Cluster) -> int:
    """The port of the API under test, once per ASGI server (``api.server``)."""
    if request.param == "uvicorn":
        return two_metros.api_port
    return two_metros.api_port_of("api-hypercorn")


@pytest.fixture
def client(two_metros: Cluster, api_port: int) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=f"http://127.0.0.1:{api_port}/v1",
                       api_key=two_metros.api_key, max_retries=0, timeout=60) as sdk:
        yield sdk


@pytest.fixture(scope="session")
def sdk(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[openai.OpenAI]:
    """The official client on a cluster of one pod (fra-1) running the real tiny model
    (one for the session, like ``two_metros``)."""
    with Cluster(tmp_path_factory.mktemp("one-pod"), model_cache=tiny_model) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                           max_retries=0) as client:
            yield client
