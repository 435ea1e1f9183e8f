"""Sealed engines end to end: a node whose engines run unsealed takes no work
unless the scheduler allows development nodes, and then everyone can see it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from volt.testing import Cluster

CHAT = {"model": "volt-tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}


@pytest.mark.parametrize("allow_unsealed", [False, True])
def test_unsealed_nodes_take_work_only_where_allowed_and_say_so(
    tmp_path: Path, tiny_model: Path, allow_unsealed: bool,
) -> None:
    with Cluster(tmp_path, engine_mode="instant", model_cache=tiny_model, extra_env={
            "VOLT_SCHEDULER_ALLOW_UNSEALED": "1" if allow_unsealed else "0"}) as cluster:
        cluster.add_agent("sealed-1", metro="fra")
        cluster.add_agent("open-1", metro="ams", insecure_unsealed="1")
        cluster.start_api()
        cluster.wait_routable(metro="fra")
        status, _, body = cluster.request("/v1/chat/completions",
                                          {**CHAT, "volt": {"metro": "fra"}})
        assert json.loads(body)["volt"]["seal"] == "sealed"
        if not allow_unsealed:
            status, _, body = cluster.request("/v1/chat/completions",
                                              {**CHAT, "volt": {"metro": "ams"}})
            assert status == 503  # its only pod is drained
            place = cluster.request("/v1/models")[2]
            assert "insecure" not in json.loads(place)["data"][0].get("volt", {})
            return
        cluster.wait_routable(metro="ams")
        status, _, body = cluster.request("/v1/chat/completions",
                                          {**CHAT, "volt": {"metro": "ams"}})
        assert status == 200
        assert json.loads(body)["volt"]["seal"] == "insecure"
        models = json.loads(cluster.request("/v1/models")[2])["data"]
        assert models[0]["volt"]["insecure"] is True
        assert models[0]["volt"]["not_attested"] is True  # test clusters have no TPM
