"""The real Kubernetes control plane the Forge tests stand on, proven with the
official client and kubectl: quota on GPUs, a namespaced role, a bound token
that dies with the object it is bound to, and kube-scheduler binding a GPU pod
to a fake GPU node."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from kubernetes import client
from support.kube import GPU, KubeControlPlane, kubeconfig

pytestmark = pytest.mark.slow

NAMESPACE = "smoke-tenant"


def gpu_pod(name: str, gpus: int) -> str:
    return json.dumps({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
        "spec": {"containers": [{
            "name": "main", "image": "registry.invalid/none:1",
            "resources": {"requests": {GPU: str(gpus)}, "limits": {GPU: str(gpus)}},
        }]},
    })


@pytest.fixture(scope="module")
def tenant_kubeconfig(kube: KubeControlPlane, tmp_path_factory: pytest.TempPathFactory
                      ) -> tuple[Path, str]:
    """A namespace with 8 GPUs of quota and a ServiceAccount token bound to a
    Secret, written as a kubeconfig: (path, the Secret's name)."""
    api = kube.api_client()
    core, rbac = client.CoreV1Api(api), client.RbacAuthorizationV1Api(api)
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name="smoke-other")))
    core.create_namespaced_resource_quota(NAMESPACE, client.V1ResourceQuota(
        metadata=client.V1ObjectMeta(name="gpus"),
        spec=client.V1ResourceQuotaSpec(hard={f"requests.{GPU}": "8"})))
    core.create_namespaced_service_account(NAMESPACE, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name="tenant")))
    rbac.create_namespaced_role(NAMESPACE, client.V1Role(
        metadata=client.V1ObjectMeta(name="tenant"),
        rules=[client.V1PolicyRule(api_groups=[""], resources=["pods"],
                                   verbs=["get", "list", "watch", "create", "delete"])]))
    rbac.create_namespaced_role_binding(NAMESPACE, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="tenant"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role",
                                  name="tenant"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="tenant",
                                       namespace=NAMESPACE)]))
    binding = core.create_namespaced_secret(NAMESPACE, client.V1Secret(
        metadata=client.V1ObjectMeta(name="token-binding-1"), type="Opaque"))
    token = core.create_namespaced_service_account_token("tenant", NAMESPACE,
        client.AuthenticationV1TokenRequest(spec=client.V1TokenRequestSpec(
            audiences=["https://kubernetes.default.svc"], expiration_seconds=3600,
            bound_object_ref=client.V1BoundObjectReference(
                api_version="v1", kind="Secret", name=binding.metadata.name,
                uid=binding.metadata.uid)))).status.token
    path = tmp_path_factory.mktemp("tenant") / "kubeconfig"
    path.write_text(json.dumps(kubeconfig(kube.server, kube.ca_pem, token,
                                          namespace=NAMESPACE, user="tenant")))
    kube.wait_for_service_account(NAMESPACE)
    kube.wait_for_quota(NAMESPACE, "gpus")
    kube.add_gpu_node("smoke-gpu-a", gpus=8, labels={"volt.ai/metro": "fra"})
    return path, binding.metadata.name


def test_a_bound_token_runs_gpu_pods_within_its_quota_and_namespace_only(
    kube: KubeControlPlane, tenant_kubeconfig: tuple[Path, str]
) -> None:
    config, secret = tenant_kubeconfig
    core = client.CoreV1Api(kube.api_client())

    created = kube.kubectl("create", "-f", "-", kubeconfig=config, stdin=gpu_pod("four", 4))
    assert "pod/four created" in created.stdout

    refused = kube.kubectl("create", "-f", "-", kubeconfig=config, stdin=gpu_pod("nine", 9),
                           check=False)
    assert refused.returncode != 0
    assert "exceeded quota" in refused.stderr

    # kube-scheduler binds the 4-GPU pod to the only node with GPUs.
    deadline = time.monotonic() + 30
    while core.read_namespaced_pod("four", NAMESPACE).spec.node_name is None:
        assert time.monotonic() < deadline, kube.logs()
        time.sleep(0.2)
    assert core.read_namespaced_pod("four", NAMESPACE).spec.node_name == "smoke-gpu-a"

    for forbidden in (("get", "pods", "-n", "smoke-other"), ("get", "nodes"),
                      ("create", "namespace", "escape")):
        result = kube.kubectl(*forbidden, kubeconfig=config, check=False)
        assert result.returncode != 0
        assert "Forbidden" in result.stderr, result.stderr

    # Deleting the Secret the token is bound to revokes it (after the
    # apiserver's ~10 s token cache).
    core.delete_namespaced_secret(secret, NAMESPACE)
    deadline = time.monotonic() + 30
    while True:
        result = kube.kubectl("get", "pods", kubeconfig=config, check=False)
        if result.returncode != 0:
            break
        assert time.monotonic() < deadline, "the token still works 30 s after revocation"
        time.sleep(1)
    assert "Unauthorized" in result.stderr or "must be logged in" in result.stderr, result.stderr

    core.delete_namespaced_pod("four", NAMESPACE, grace_period_seconds=0)
