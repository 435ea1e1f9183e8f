"""A lease's scope in Kubernetes, through the official ``kubernetes`` client.

Per lease, a namespace ``volt-<lease id>`` holding:

- a ResourceQuota: ``requests.nvidia.com/gpu`` (and limits) = the lease's count;
- a LimitRange: default CPU and memory for containers that name none;
- NetworkPolicies: deny all ingress and egress (zero egress), plus the CIDRs
  the lease explicitly allows out;
- a ServiceAccount ``tenant`` with a Role and RoleBinding in that namespace
  only (workloads, yes; its own quota, policies and RBAC, no);
- annotations the apiserver's ``PodNodeSelector`` and
  ``PodTolerationRestriction`` admission plugins enforce: every pod of the
  namespace selects the leased nodes and may tolerate their taint and no
  other. The leased nodes are labelled and tainted ``volt.ai/lease=<id>``,
  so only this namespace's pods land on them. (Both plugins must be enabled
  on the apiserver; the tests run with them.)

Kubeconfigs carry a bound ServiceAccount token (TokenRequest) bound to a
Secret of its own, so each can be revoked alone (delete the Secret) and all
die with the namespace. Every call is idempotent: a restarted scheduler
simply provisions or tears down again. The client is synchronous; callers run
these methods in a thread (``asyncio.to_thread``). Kubernetes' errors are
translated here, at the boundary, into ``KubeUnavailable``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

GPU = "nvidia.com/gpu"
LEASE_LABEL = "volt.ai/lease"
ORG_LABEL = "volt.ai/org"
MANAGED_BY = {"app.kubernetes.io/managed-by": "volt"}
TENANT = "tenant"
AUDIENCE = "https://kubernetes.default.svc"
T = TypeVar("T")

TENANT_RULES: list[dict[str, Any]] = [
    {"apiGroups": [""], "resources": [
        "pods", "pods/log", "pods/exec", "pods/attach", "pods/portforward", "services",
        "configmaps", "secrets", "persistentvolumeclaims", "serviceaccounts"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete",
               "deletecollection"]},
    {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "replicasets",
                                          "daemonsets"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"],
     "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
    # Read-only: what bounds the lease is visible, never editable.
    {"apiGroups": [""], "resources": ["events", "resourcequotas", "limitranges"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["networking.k8s.io"], "resources": ["networkpolicies"],
     "verbs": ["get", "list", "watch"]},
    {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"],
     "verbs": ["get", "list", "watch"]},
]


class KubeUnavailable(Exception):
    """Kubernetes refused or did not answer; the reconciler retries."""


@dataclass(frozen=True, slots=True)
class LeaseScope:
    """What a lease's namespace is made from."""

    lease_id: str
    org_id: str
    gpus: int
    nodes: tuple[str, ...]
    egress_cidrs: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MintedToken:
    token: str
    expires_at: float
    binding: str
    """The Secret the token is bound to: deleting it revokes the token."""


def namespace_for(lease_id: str) -> str:
    return f"volt-{lease_id}"


def binding_name(kubeconfig_id: str) -> str:
    return f"kubeconfig-{kubeconfig_id}"


def _ignore(status: int, call: Callable[[], T]) -> T | None:
    try:
        return call()
    except ApiException as exc:
        if exc.status == status:
            return None
        raise


def _translated(method: Callable[..., T]) -> Callable[..., T]:
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            return method(*args, **kwargs)
        except ApiException as exc:
            raise KubeUnavailable(
                f"Kubernetes answered {exc.status} {exc.reason or ''}".strip()) from exc
        except (OSError, ValueError) as exc:  # urllib3 errors are OSErrors
            raise KubeUnavailable(f"Kubernetes did not answer: {type(exc).__name__}") from exc

    wrapper.__name__ = method.__name__
    wrapper.__doc__ = method.__doc__
    return wrapper


def _other_taints(node: Any) -> list[dict[str, str]]:
    """A node's taints but a lease's, as a patch writes them."""
    return [{"key": t.key, "value": t.value or "", "effect": t.effect}
            for t in (node.spec.taints or []) if t.key != LEASE_LABEL]


class KubeScope:
    def __init__(self, api: Any, *, server: str, ca_pem: bytes,
                 clock: Callable[[], float] = time.time) -> None:
        self.api = api
        self.server = server
        self.ca_pem = ca_pem
        self.clock = clock
        # Any: the client's models make every field optional; what Kubernetes
        # returns for these calls always has them.
        self.core: Any = client.CoreV1Api(api)
        self.rbac: Any = client.RbacAuthorizationV1Api(api)
        self.net: Any = client.NetworkingV1Api(api)

    @classmethod
    def from_kubeconfig(cls, path: str | Path) -> KubeScope:
        """The scheduler's own (cluster-admin) kubeconfig; the server and CA it
        names go into every tenant kubeconfig."""
        document = yaml.safe_load(Path(path).read_text())
        current = document.get("current-context")
        context = next((c["context"] for c in document.get("contexts", [])
                        if c["name"] == current), None)
        cluster_name = context["cluster"] if context else document["clusters"][0]["name"]
        cluster = next(c["cluster"] for c in document["clusters"] if c["name"] == cluster_name)
        if "certificate-authority-data" in cluster:
            ca_pem = base64.b64decode(cluster["certificate-authority-data"])
        else:
            ca_pem = Path(cluster["certificate-authority"]).read_bytes()
        api = config.new_client_from_config(config_file=str(path))  # type: ignore[no-untyped-call]
        return cls(api, server=cluster["server"], ca_pem=ca_pem)

    # --- provisioning ------------------------------------------------------------

    @_translated
    def provision(self, scope: LeaseScope, *, quota_timeout_s: float = 30.0) -> None:
        """Make (or finish making) the lease's namespace and take its nodes.
        Returns once the quota is enforced (the controller filled its status)."""
        namespace = namespace_for(scope.lease_id)
        selector = f"{LEASE_LABEL}={scope.lease_id}"
        own = [{"key": LEASE_LABEL, "operator": "Equal", "value": scope.lease_id,
                "effect": "NoSchedule"}]
        # What Kubernetes itself adds to pods must stay allowed (not-ready and
        # unreachable: DefaultTolerationSeconds; memory-pressure: this same
        # plugin, for pods that are not BestEffort); a lease's pods may
        # tolerate nothing else.
        allowed = [*own, *({"key": f"node.kubernetes.io/{key}", "operator": "Exists",
                            "effect": "NoExecute"} for key in ("not-ready", "unreachable")),
                   {"key": "node.kubernetes.io/memory-pressure", "operator": "Exists",
                    "effect": "NoSchedule"}]
        labels = {LEASE_LABEL: scope.lease_id, ORG_LABEL: scope.org_id, **MANAGED_BY}
        meta = {"labels": labels}
        self._create(self.core.create_namespace, None, client.V1Namespace, {
            "metadata": {"name": namespace, **meta, "annotations": {
                "scheduler.alpha.kubernetes.io/node-selector": selector,
                "scheduler.alpha.kubernetes.io/defaultTolerations": json.dumps(own),
                "scheduler.alpha.kubernetes.io/tolerationsWhitelist": json.dumps(allowed),
            }}})
        gpus = str(scope.gpus)
        self._create(self.core.create_namespaced_resource_quota, namespace,
                     client.V1ResourceQuota, {
                         "metadata": {"name": "gpus", **meta},
                         "spec": {"hard": {f"requests.{GPU}": gpus, f"limits.{GPU}": gpus}}})
        self._create(self.core.create_namespaced_limit_range, namespace, client.V1LimitRange, {
            "metadata": {"name": "defaults", **meta},
            "spec": {"limits": [{"type": "Container",
                                 "default": {"cpu": "1", "memory": "1Gi"},
                                 "defaultRequest": {"cpu": "100m", "memory": "128Mi"}}]}})
        self._create(self.net.create_namespaced_network_policy, namespace,
                      client.V1NetworkPolicy, {
                          "metadata": {"name": "deny-all", **meta},
                          "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}})
        if scope.egress_cidrs:
            self._create(self.net.create_namespaced_network_policy, namespace,
                         client.V1NetworkPolicy, {
                             "metadata": {"name": "allowed-egress", **meta},
                             "spec": {"podSelector": {}, "policyTypes": ["Egress"],
                                      "egress": [{"to": [{"ipBlock": {"cidr": cidr}}
                                                         for cidr in scope.egress_cidrs]}]}})
        self._create(self.core.create_namespaced_service_account, namespace,
                     client.V1ServiceAccount, {"metadata": {"name": TENANT, **meta}})
        self._create(self.rbac.create_namespaced_role, namespace, client.V1Role, {
            "metadata": {"name": TENANT, **meta}, "rules": TENANT_RULES})
        self._create(self.rbac.create_namespaced_role_binding, namespace, client.V1RoleBinding, {
            "metadata": {"name": TENANT, **meta},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                        "name": TENANT},
            "subjects": [{"kind": "ServiceAccount", "name": TENANT,
                          "namespace": namespace}]})
        for node in scope.nodes:
            self._take_node(node, scope)
        self._wait_quota(namespace, quota_timeout_s)

    def _create(self, create: Callable[..., Any], namespace: str | None, model: Any,
                manifest: dict[str, Any]) -> None:
        body = model.from_dict(manifest)
        if namespace is None:
            _ignore(409, lambda: create(body=body))
        else:
            _ignore(409, lambda: create(namespace=namespace, body=body))

    def _take_node(self, name: str, scope: LeaseScope) -> None:
        node = self.core.read_node(name)
        held = [t for t in (node.spec.taints or []) if t.key == LEASE_LABEL]
        if any(t.value != scope.lease_id for t in held):
            raise KubeUnavailable(f"node {name} is tainted for lease {held[0].value}")
        taints = [*_other_taints(node), {"key": LEASE_LABEL, "value": scope.lease_id,
                                         "effect": "NoSchedule"}]
        self.core.patch_node(name, {
            "metadata": {"labels": {LEASE_LABEL: scope.lease_id, ORG_LABEL: scope.org_id}},
            "spec": {"taints": taints},
        })

    def _wait_quota(self, namespace: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            quota = self.core.read_namespaced_resource_quota("gpus", namespace)
            if quota.status is not None and quota.status.hard:
                return
            if time.monotonic() > deadline:
                raise KubeUnavailable(f"the GPU quota of {namespace} is not enforced yet")
            time.sleep(0.1)

    # --- kubeconfigs -------------------------------------------------------------

    @_translated
    def mint(self, lease_id: str, kubeconfig_id: str, ttl_s: int) -> MintedToken:
        """A token for the lease's ServiceAccount, bound to a Secret of its own."""
        namespace = namespace_for(lease_id)
        name = binding_name(kubeconfig_id)
        models: Any = client
        secret = self.core.create_namespaced_secret(namespace, models.V1Secret.from_dict({
            "metadata": {"name": name, "labels": {LEASE_LABEL: lease_id, **MANAGED_BY}},
            "type": "Opaque"}))
        request = models.AuthenticationV1TokenRequest.from_dict({"spec": {
            "audiences": [AUDIENCE], "expirationSeconds": ttl_s,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": name,
                               "uid": secret.metadata.uid}}})
        answer = self.core.create_namespaced_service_account_token(TENANT, namespace, request)
        expires = answer.status.expiration_timestamp
        return MintedToken(token=answer.status.token, binding=name,
                           expires_at=expires.timestamp() if expires else self.clock() + ttl_s)

    @_translated
    def revoke(self, lease_id: str, kubeconfig_id: str) -> None:
        _ignore(404, lambda: self.core.delete_namespaced_secret(
            binding_name(kubeconfig_id), namespace_for(lease_id)))

    # --- teardown ----------------------------------------------------------------

    @_translated
    def teardown(self, lease_id: str, nodes: Sequence[str]) -> bool:
        """Stop the lease's pods now, delete its namespace, give its nodes back.
        True once the namespace is gone (call again until then)."""
        namespace = namespace_for(lease_id)
        # The tenant's time is up: no grace period (and a node whose kubelet
        # is gone would otherwise hold them Terminating for ever).
        _ignore(404, lambda: self.core.delete_collection_namespaced_pod(
            namespace, grace_period_seconds=0))
        _ignore(404, lambda: self.core.delete_namespace(
            namespace, propagation_policy="Foreground"))
        for node in nodes:
            self._release_node(node, lease_id)
        return _ignore(404, lambda: self.core.read_namespace(namespace)) is None

    def _release_node(self, name: str, lease_id: str) -> None:
        node = _ignore(404, lambda: self.core.read_node(name))
        if node is None:
            return
        labels = node.metadata.labels or {}
        if labels.get(LEASE_LABEL) not in (None, lease_id):
            return  # already another lease's: not ours to touch
        taints = _other_taints(node)
        self.core.patch_node(name, {
            "metadata": {"labels": {LEASE_LABEL: None, ORG_LABEL: None}},
            "spec": {"taints": taints or None},
        })

    def close(self) -> None:
        self.api.close()
