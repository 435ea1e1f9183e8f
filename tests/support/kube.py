"""A real Kubernetes control plane for tests: etcd, kube-apiserver,
kube-controller-manager and kube-scheduler on free loopback ports.

No kubelet runs: GPU "nodes" are Node objects created with ``nvidia.com/gpu``
capacity (``add_gpu_node``). kube-scheduler binds pods to them for real; the
pods never start, so they are deleted with a grace period of 0.

    with KubeControlPlane(tmp_path) as kube:
        kube.add_gpu_node("gpu-a", gpus=8, labels={"volt.ai/metro": "fra"})
        kube.kubectl("get", "nodes")

The binaries come from ``tests/support/build-kubernetes`` (built once with Go,
cached by version) and etcd from Debian's ``etcd-server``. What was measured
and why each flag is there:

- Without the controller-manager a namespace gets no ``default``
  ServiceAccount (pods are refused) and a ResourceQuota no ``status.hard``
  (it is not enforced): ``wait_for_quota`` and ``wait_for_service_account``.
- ``TaintNodesByCondition`` taints every new Node ``not-ready``; with no
  kubelet nothing clears it, so ``add_gpu_node`` removes it (the node
  lifecycle controller is off so that it does not come back).
- The apiserver caches accepted tokens for 10 s: a revoked bound token fails
  within ~12 s.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from support.go_built import built
from support.tls import serving_cert, write_pem

from volt.processes import _die_with_parent
from volt.up.nats_server import free_port

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-kubernetes"
GPU = "nvidia.com/gpu"
READY_TIMEOUT_S = 60.0


class KubeError(Exception):
    pass


def kubernetes_binaries() -> Path:
    """The folder holding kube-apiserver & co., building them on first use."""
    return built(BUILD_SCRIPT)


def etcd_binary() -> str | None:
    return shutil.which("etcd") or (
        "/usr/bin/etcd" if Path("/usr/bin/etcd").exists() else None)


def kubeconfig(server: str, ca_pem: bytes, token: str, *, namespace: str = "default",
               user: str = "user") -> dict[str, Any]:
    """A kubeconfig document (dict) for a bearer token."""
    return {
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "volt", "cluster": {
            "server": server,
            "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "volt", "context": {
            "cluster": "volt", "user": user, "namespace": namespace}}],
        "current-context": "volt",
    }


class KubeControlPlane:
    def __init__(self, root: Path, *, binaries: Path | None = None) -> None:
        self.root = root
        self.binaries = binaries
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self.admin_token = base64.urlsafe_b64encode(os.urandom(24)).decode().rstrip("=")
        self.ca_pem = b""
        self.admin_kubeconfig = root / "admin.kubeconfig"
        self._kubectl_calls = 0

    # -- lifecycle -----------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> KubeControlPlane:
        etcd = etcd_binary()
        if etcd is None:
            raise KubeError("etcd is not installed (Debian package etcd-server)")
        binaries = self.binaries or kubernetes_binaries()
        self.binaries = binaries
        pki = self.root / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        ca, cert, key = serving_cert(pki, "apiserver", names=(
            "127.0.0.1", "10.96.0.1", "localhost", "kubernetes.default.svc"))
        self.ca_pem = ca.read_bytes()
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_private = write_pem(pki / "sa.key", sa_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()))
        sa_public = write_pem(pki / "sa.pub", sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        tokens = pki / "tokens.csv"
        write_pem(tokens, f'{self.admin_token},volt-test-admin,uid-admin,"system:masters"\n'
                   .encode())

        etcd_port, etcd_peer = free_port(), free_port()
        self._start("etcd", [
            etcd, "--name", "volt-test", "--data-dir", str(self.root / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{etcd_peer}",
            "--initial-cluster", f"volt-test=http://127.0.0.1:{etcd_peer}",
            "--unsafe-no-fsync",  # a test cluster: speed over durability
        ])
        self.port = free_port()
        self._start("kube-apiserver", [
            str(binaries / "kube-apiserver"),
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.port}",
            f"--tls-cert-file={cert}", f"--tls-private-key-file={key}",
            f"--client-ca-file={ca}",
            f"--token-auth-file={tokens}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={sa_public}",
            f"--service-account-signing-key-file={sa_private}",
            "--api-audiences=https://kubernetes.default.svc",
            "--authorization-mode=Node,RBAC",
            "--enable-admission-plugins=NodeRestriction,ResourceQuota,PodNodeSelector,"
            "PodTolerationRestriction",
            "--endpoint-reconciler-type=none",
            "--service-cluster-ip-range=10.96.0.0/24",
            f"--cert-dir={pki}",
            "--profiling=false",
        ])
        self.admin_kubeconfig.write_text(json.dumps(kubeconfig(
            self.server, self.ca_pem, self.admin_token, user="admin")))
        self._wait_healthy()
        common = [f"--kubeconfig={self.admin_kubeconfig}", "--bind-address=127.0.0.1",
                  f"--cert-dir={pki}", "--leader-elect=false", "--profiling=false"]
        self._start("kube-controller-manager", [
            str(binaries / "kube-controller-manager"), *common,
            f"--secure-port={free_port()}",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={sa_private}",
            f"--root-ca-file={ca}",
            # No kubelets: node lifecycle would taint and evict every fake node.
            "--controllers=*,-node-lifecycle-controller",
        ])
        self._start("kube-scheduler", [
            str(binaries / "kube-scheduler"), *common, f"--secure-port={free_port()}",
        ])
        return self

    def _start(self, name: str, command: list[str]) -> None:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 - held by the child
        self.processes[name] = subprocess.Popen(
            command, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log.close()

    def _wait_healthy(self) -> None:
        context = ssl.create_default_context(cadata=self.ca_pem.decode())
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            self._check_alive()
            request = urllib.request.Request(
                f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"})
            with contextlib.suppress(OSError, urllib.error.HTTPError), \
                    urllib.request.urlopen(request, timeout=2, context=context) as response:
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise KubeError(f"kube-apiserver not ready within {READY_TIMEOUT_S}s\n{self.logs()}")

    def _check_alive(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                raise KubeError(f"{name} exited with {process.returncode}\n{self.logs()}")

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"--- {name}\n{(self.root / f'{name}.log').read_text(errors='replace')[-tail:]}"
            for name in self.processes)

    def stop(self) -> None:
        for process in reversed(list(self.processes.values())):
            if process.poll() is None:
                process.terminate()
        for process in self.processes.values():
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> KubeControlPlane:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- clients -------------------------------------------------------------

    def api_client(self, token: str | None = None) -> Any:
        """An official ``kubernetes`` client (``ApiClient``) for a bearer token
        (the admin's by default)."""
        from kubernetes import client

        configuration = client.Configuration()
        configuration.host = self.server
        ca_file = self.root / "pki" / "ca.crt"
        configuration.ssl_ca_cert = str(ca_file)
        configuration.api_key = {"authorization": token or self.admin_token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)

    def kubectl(self, *args: str, kubeconfig: Path | None = None, stdin: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs the real kubectl; each call gets its own cache folder (a shared
        one would leak discovery between identities)."""
        assert self.binaries is not None
        self._kubectl_calls += 1
        cache = self.root / "kubectl-cache" / str(self._kubectl_calls)
        result = subprocess.run(
            [str(self.binaries / "kubectl"), f"--kubeconfig={kubeconfig or self.admin_kubeconfig}",
             f"--cache-dir={cache}", "--request-timeout=20s", *args],
            input=stdin, capture_output=True, text=True, timeout=60, check=False,
        )
        if check and result.returncode != 0:
            raise KubeError(f"kubectl {' '.join(args)}: {result.stderr.strip()}")
        return result

    # -- fixtures for GPU clouds ----------------------------------------------

    def add_gpu_node(self, name: str, *, gpus: int = 8,
                     labels: dict[str, str] | None = None) -> None:
        """A Node object with ``gpus`` of ``nvidia.com/gpu``, Ready and untainted."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        capacity = {"cpu": "64", "memory": "512Gi", "pods": "110", GPU: str(gpus)}
        core.create_node(client.V1Node(
            metadata=client.V1ObjectMeta(name=name, labels=labels or {}),
            status=client.V1NodeStatus(
                capacity=capacity, allocatable=capacity,
                conditions=[client.V1NodeCondition(type="Ready", status="True",
                                                   reason="VoltTestNode")],
            ),
        ))
        # The TaintNodesByCondition admission plugin tainted it not-ready.
        not_ready = "node.kubernetes.io/not-ready"
        deadline = time.monotonic() + 10
        while True:
            taints = core.read_node(name).spec.taints or []
            if not any(t.key == not_ready for t in taints):
                return
            if time.monotonic() > deadline:
                raise KubeError(f"node {name} keeps its not-ready taint")
            kept = [t.to_dict() for t in taints if t.key != not_ready]
            core.patch_node(name, {"spec": {"taints": kept or None}})

    def remove_node(self, name: str) -> None:
        from kubernetes import client

        with contextlib.suppress(Exception):
            client.CoreV1Api(self.api_client()).delete_node(name)

    def wait_for_service_account(self, namespace: str, name: str = "default",
                                 timeout_s: float = 30) -> None:
        """Until the controller-manager has made ``name`` in ``namespace``."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api_client())
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                core.read_namespaced_service_account(name, namespace)
                return
            except ApiException as exc:
                if exc.status != 404 or time.monotonic() > deadline:
                    raise
            time.sleep(0.1)

    def wait_for_quota(self, namespace: str, name: str, timeout_s: float = 30) -> None:
        """Until the quota controller has filled ``status.hard`` (only then is it enforced)."""
        from kubernetes import client

        core = client.CoreV1Api(self.api_client())
        deadline = time.monotonic() + timeout_s
        while not core.read_namespaced_resource_quota(name, namespace).status.hard:
            if time.monotonic() > deadline:
                raise KubeError(f"quota {namespace}/{name} has no status.hard")
            time.sleep(0.1)
