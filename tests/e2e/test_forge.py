"""Forge end to end: the API, the scheduler and a real Kubernetes control
plane (etcd, kube-apiserver, controller-manager, kube-scheduler), with the
tenant's side proven by real kubectl on the kubeconfig Volt mints.

The GPU hosts are simulated (``support/gpu_fleet.py``: their heartbeats on
the bus, their Node objects in Kubernetes); everything else is real.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from kubernetes import client
from support.gpu_fleet import GpuFleet, GpuHost
from support.kube import GPU, KubeControlPlane

from volt.identity.orgs import Orgs
from volt.sdk import Client
from volt.sdk._errors import APIStatusError, VoltError
from volt.store import Database
from volt.testing import Cluster

pytestmark = pytest.mark.slow

HOSTS = [
    # fra: four 8-GPU hosts, two NVLink domains of two, one rack.
    GpuHost("fgpu-1", "fra", "fra-r1", "fra-d1"), GpuHost("fgpu-2", "fra", "fra-r1", "fra-d1"),
    GpuHost("fgpu-3", "fra", "fra-r1", "fra-d2"), GpuHost("fgpu-4", "fra", "fra-r1", "fra-d2"),
    # ams: five 4-GPU hosts (20 GPUs) for the race.
    *(GpuHost(f"agpu-{i}", "ams", "ams-r1", "", gpus=4) for i in range(1, 6)),
]


@dataclass
class Forge:
    cluster: Cluster
    kube: KubeControlPlane
    fleet: GpuFleet
    key: str
    """An owner key of org forge-a."""
    tmp: Path

    def sdk(self, key: str | None = None) -> Client:
        return Client(f"http://127.0.0.1:{self.cluster.api_port}", key or self.key,
                      max_retries=0)

    def wait_lease(self, lease_id: str, states: set[str], timeout_s: float = 60,
                   key: str | None = None) -> Any:
        deadline = time.monotonic() + timeout_s
        with self.sdk(key) as volt:
            while True:
                lease = volt.forge.get(lease_id)
                if lease.state in states:
                    return lease
                assert time.monotonic() < deadline, (lease, self.cluster.services[
                    "scheduler"].log_text()[-3000:])
                time.sleep(0.2)

    def cli(self, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "VOLT_API_KEY": key or self.key,
               "VOLT_BASE_URL": f"http://127.0.0.1:{self.cluster.api_port}"}
        return subprocess.run([sys.executable, "-m", "volt", *args], env=env,
                              capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def forge(kube: KubeControlPlane, tmp_path_factory: pytest.TempPathFactory,
          tiny_model: Path) -> Iterator[Forge]:
    for host in HOSTS:
        kube.add_gpu_node(host.node_id, gpus=host.gpus,
                          labels={"volt.ai/metro": host.metro, "volt.ai/rack": host.rack})
    root = tmp_path_factory.mktemp("forge")
    try:
        with Cluster(root, engine_mode="instant", model_cache=tiny_model, extra_env={
            "VOLT_FORGE_KUBECONFIG": str(kube.admin_kubeconfig),
            "VOLT_FORGE_DRAIN_TIMEOUT_S": "0", "VOLT_FORGE_MIN_LEASE_S": "5",
            "VOLT_FORGE_RECONCILE_INTERVAL_S": "0.2",
        }) as cluster:
            cluster.start_api()
            fleet = GpuFleet(cluster, HOSTS).start()
            try:
                world = Forge(cluster, kube, fleet, cluster.add_key("forge-a"), root)
                deadline = time.monotonic() + 60

                def fleet_seen() -> bool:
                    try:
                        with world.sdk() as volt:
                            return sum(o.total for o in volt.forge.availability().data) >= 52
                    except VoltError:
                        return False  # the API is still starting

                while not fleet_seen():
                    assert time.monotonic() < deadline, "the fleet never showed up"
                    time.sleep(0.2)
                yield world
            finally:
                fleet.stop()
    finally:
        for host in HOSTS:
            kube.remove_node(host.node_id)


def gpu_pod(name: str, gpus: int) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "main", "image": "registry.invalid/none:1",
            "resources": {"requests": {GPU: str(gpus)}, "limits": {GPU: str(gpus)}}}]},
    })


def until(check: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.5)


def test_availability_reports_the_fleet_by_metro_and_topology(forge: Forge) -> None:
    result = forge.cli("forge", "availability", "--metro", "fra", "--json")
    assert result.returncode == 0, result.stderr
    (fra,) = json.loads(result.stdout)["data"]
    assert (fra["gpu_model"], fra["total"], fra["free"]) == ("H100", 32, 32)
    assert fra["largest_lease"] == {"on_node": 8, "in_nvlink_domain": 16, "in_rack": 32}
    with forge.sdk() as volt:
        assert [o.metro for o in volt.forge.availability(gpu_model="H100").data] == [
            "ams", "fra"]
        assert volt.forge.availability(metro="nowhere").data == []


def test_a_lease_gives_a_namespace_that_kubectl_can_use_and_nothing_else(
        forge: Forge) -> None:
    created = forge.cli("forge", "lease", "create", "H100", "4", "--metro", "fra",
                        "--duration", "1h", "--wait", "--json")
    assert created.returncode == 0, created.stderr
    lease = json.loads(created.stdout)
    assert lease["state"] == "active", lease
    ((node, gpus),) = [(n["node_id"], n["gpus"]) for n in lease["nodes"]]
    assert gpus == 4
    namespace = lease["namespace"]

    # Spark sees the node leased (it takes no request there), and the node's
    # agent was told to hand its GPUs over before the lease became active.
    view = asyncio.run(forge.cluster.view())
    assert {n.node_id: n.lease_id for n in view.nodes}[node] == lease["id"]
    assert forge.fleet.handed_over[node] == lease["id"]

    minted = forge.cli("forge", "kubeconfig", lease["id"])
    assert minted.returncode == 0, minted.stderr
    config = forge.tmp / "tenant.kubeconfig"
    config.write_text(minted.stdout)

    def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return forge.kube.kubectl(*args, kubeconfig=config, stdin=stdin, check=False)

    run = kubectl("create", "-f", "-", stdin=gpu_pod("train", 4))
    assert "pod/train created" in run.stdout, run.stderr
    core = client.CoreV1Api(forge.kube.api_client())
    until(lambda: core.read_namespaced_pod("train", namespace).spec.node_name is not None,
          30, "kube-scheduler never bound the pod")
    assert core.read_namespaced_pod("train", namespace).spec.node_name == node

    over = kubectl("create", "-f", "-", stdin=gpu_pod("greedy", 1))
    assert over.returncode != 0
    assert "exceeded quota" in over.stderr, over.stderr
    for forbidden in (("get", "pods", "-n", "default"), ("get", "nodes"),
                      ("get", "namespaces"), ("create", "namespace", "escape"),
                      ("delete", "networkpolicy", "deny-all"),
                      ("patch", "role", "tenant", "--type=json", "-p",
                       '[{"op":"add","path":"/rules/0","value":{"apiGroups":["*"],'
                       '"resources":["*"],"verbs":["*"]}}]'),
                      ("delete", "resourcequota", "gpus")):
        refused = kubectl(*forbidden)
        assert refused.returncode != 0, forbidden
        assert "Forbidden" in refused.stderr, (forbidden, refused.stderr)
    assert kubectl("get", "networkpolicy", "deny-all").returncode == 0  # visible, kept

    # Another org sees none of it.
    other = forge.cluster.add_key("forge-b")
    with forge.sdk(other) as volt:
        with pytest.raises(APIStatusError) as hidden:
            volt.forge.get(lease["id"])
        assert hidden.value.status == 404
        assert volt.forge.list().data == []

    # Revoking one kubeconfig: 401 within the apiserver's token cache.
    with forge.sdk() as volt:
        kubeconfig_id = volt.forge.get(lease["id"]).kubeconfigs[0].id
        volt.forge.revoke_kubeconfig(lease["id"], kubeconfig_id)
    until(lambda: kubectl("get", "pods").returncode != 0, 30,
          "the kubeconfig still works 30 s after revocation")
    assert "Unauthorized" in (r := kubectl("get", "pods")).stderr or \
        "must be logged in" in r.stderr, r.stderr

    # Termination: the namespace goes, the node is untainted and back.
    with forge.sdk() as volt:
        second = volt.forge.kubeconfig(lease["id"])
        (forge.tmp / "second.kubeconfig").write_text(second.kubeconfig)
        assert volt.forge.terminate(lease["id"]).state in ("expiring", "terminated")
    ended = forge.wait_lease(lease["id"], {"terminated"})
    assert ended.ended_at is not None
    assert ended.gpu_seconds > 0
    namespaces = {n.metadata.name for n in core.list_namespace().items}
    assert namespace not in namespaces
    taints = core.read_node(node).spec.taints or []
    assert not [t for t in taints if t.key == "volt.ai/lease"]
    assert "volt.ai/lease" not in (core.read_node(node).metadata.labels or {})
    after = forge.kube.kubectl("get", "pods", kubeconfig=forge.tmp / "second.kubeconfig",
                               check=False)
    assert after.returncode != 0  # the namespace's tokens died with it
    view = asyncio.run(forge.cluster.view())
    assert {n.node_id: n.lease_id for n in view.nodes}[node] == ""
    assert forge.fleet.handed_over[node] == ""  # told to take its GPUs back
    # Metered: the lease's GPU-seconds are in /v1/usage.
    status, _, body = forge.cluster.request("/v1/usage", key=forge.key)
    usage = json.loads(body)
    assert status == 200
    assert {entry["lease_id"] for entry in usage["forge"]} >= {lease["id"]}
    assert usage["forge_gpu_seconds"] >= ended.gpu_seconds > 0


def test_big_leases_take_whole_nodes_of_one_nvlink_domain(forge: Forge) -> None:
    with forge.sdk() as volt:
        lease = volt.forge.create("H100", 16, "fra", duration_s=3600)
        assert lease.placement_scope == "nvlink_domain"
        nodes = {n.node_id for n in lease.nodes}
        assert nodes in ({"fgpu-1", "fgpu-2"}, {"fgpu-3", "fgpu-4"})
        with pytest.raises(APIStatusError) as shape:
            volt.forge.create("H100", 12, "fra", duration_s=3600)
        assert shape.value.status == 400
        assert "multiple of 8" in str(shape.value)
        forge.wait_lease(lease.id, {"active"})
        volt.forge.terminate(lease.id)
    forge.wait_lease(lease.id, {"terminated"})


def test_fifty_racing_requests_for_twenty_gpus(forge: Forge) -> None:
    key = forge.cluster.add_key("forge-race")
    url = f"http://127.0.0.1:{forge.cluster.api_port}/v1/forge/leases"

    def ask(_: int) -> httpx.Response:
        return httpx.post(url, json={"gpu_model": "H100", "gpu_count": 1, "metro": "ams",
                                     "duration_s": 600},
                          headers={"Authorization": f"Bearer {key}"}, timeout=60)

    with ThreadPoolExecutor(50) as pool:
        answers = list(pool.map(ask, range(50)))
    won = [a.json() for a in answers if a.status_code == 201]
    lost = [a for a in answers if a.status_code != 201]
    assert len(won) == 20, [a.text for a in lost][:3]
    assert {a.status_code for a in lost} == {503}
    assert {a.json()["error"]["code"] for a in lost} == {"insufficient_capacity"}
    per_node: dict[str, int] = {}
    for lease in won:
        for n in lease["nodes"]:
            per_node[n["node_id"]] = per_node.get(n["node_id"], 0) + n["gpus"]
    assert per_node == {f"agpu-{i}": 4 for i in range(1, 6)}
    with forge.sdk(key) as volt:
        for lease in won:
            volt.forge.terminate(lease["id"])
        for lease in won:
            forge.wait_lease(lease["id"], {"terminated"}, timeout_s=120, key=key)


def test_the_org_quota_and_clear_errors(forge: Forge) -> None:
    key = forge.cluster.add_key("forge-quota")
    org_id = forge.cluster.org_id("forge-quota")

    async def set_quota() -> None:
        db = Database(forge.cluster.store_url)
        try:
            await Orgs(db).set_gpu_quota(org_id, 4)
        finally:
            await db.close()

    asyncio.run(set_quota())
    with forge.sdk(key) as volt:
        with pytest.raises(APIStatusError) as quota:
            volt.forge.create("H100", 8, "fra", duration_s=3600)
        assert quota.value.status == 403
        assert "quota is 4" in str(quota.value)
    for body, param in (({"gpu_model": "H100", "gpu_count": 1, "metro": "fra"}, "duration_s"),
                        ({"gpu_model": "H100", "gpu_count": 0, "metro": "fra",
                          "duration_s": 60}, "gpu_count"),
                        ({"gpu_model": "H100", "gpu_count": 1, "metro": "fra",
                          "duration_s": 60, "surprise": 1}, None)):
        status, _, raw = forge.cluster.request("/v1/forge/leases", body, key=key)
        error = json.loads(raw)["error"]
        assert status == 400, raw
        assert param is None or error["param"] == param, error
    status, _, raw = forge.cluster.request("/v1/forge/leases", {
        "gpu_model": "H100", "gpu_count": 1, "metro": "fra", "duration_s": 3600},
        key=forge.cluster.add_key("forge-test-mode", mode="test"))
    assert status == 403
    assert json.loads(raw)["error"]["code"] == "test_key_not_allowed"


@pytest.mark.parametrize("state", ["pending", "provisioning", "active", "expiring"])
def test_a_scheduler_killed_mid_lease_loses_and_duplicates_nothing(
        forge: Forge, state: str) -> None:
    with forge.sdk() as volt:
        starts_at = int(time.time()) + 3600 if state == "pending" else None
        lease = volt.forge.create("H100", 8, "fra", duration_s=3600, starts_at=starts_at)
        assert lease.state == ("pending" if state == "pending" else "provisioning")
        if state in ("active", "expiring"):
            forge.wait_lease(lease.id, {"active"})
        if state == "expiring":
            volt.forge.terminate(lease.id)
        before = volt.forge.list(limit=100)
    forge.cluster.restart("scheduler", kill=True)
    final = {"pending": "pending", "expiring": "terminated"}.get(state, "active")
    ended = forge.wait_lease(lease.id, {final}, timeout_s=90)

    def fra() -> tuple[int, int]:
        """(total, free) GPUs in fra as the scheduler sees them now."""
        try:
            with forge.sdk() as volt:
                offers = {o.metro: o for o in volt.forge.availability().data}
        except APIStatusError:
            return (0, 0)  # the new scheduler is not answering yet
        return (offers["fra"].total, offers["fra"].free) if "fra" in offers else (0, 0)

    # Once the restarted scheduler has heard every host again, the lease's
    # GPUs are taken once (or, terminated, not at all).
    until(lambda: fra()[0] == 32, 30, "the restarted scheduler never saw every host")
    assert fra()[1] == (24 if final == "active" else 32)  # pending holds none yet
    with forge.sdk() as volt:
        after = volt.forge.list(limit=100)
        assert [x.id for x in after.data] == [x.id for x in before.data]
        if final == "active":
            assert ended.active_at is not None
        if final != "terminated":
            volt.forge.terminate(lease.id)
    forge.wait_lease(lease.id, {"terminated"})
