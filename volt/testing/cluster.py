"""A whole Volt in child processes, for end-to-end tests and benchmarks.

Each service is the real one (``python -m volt <service>``) talking to a real
``nats-server`` on a free port; only the ports, folders and timings are
chosen for tests. Logs go to ``<root>/logs/<name>.log`` and are printed when
a service fails to come up.

    with Cluster(tmp_path, heartbeat_interval_s=0.3) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable(metro="fra")
        client = openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key)
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Protocol

import nats
import psutil
from nats.aio.client import Client

from volt.agent.engine.tiny_model import MODEL_ID, ensure_built
from volt.config import VoltConfig, load_config
from volt.identity import workload
from volt.identity.api_key_format import Mode
from volt.identity.bus_authority import BusAuthority
from volt.identity.orgs import Orgs
from volt.identity.principal import NO_LIMITS, Limits, Role, Scope
from volt.identity.spiffe_workload import WorkloadApiSvid
from volt.identity.workload_ca import SvidFiles
from volt.processes import _die_with_parent
from volt.store import Catalog, Database
from volt.up.bootstrap import api_keys, ensure_dev_key
from volt.up.nats_server import NatsServer, free_port
from volt.wire import SCHEDULER, PlacementView, ViewQuery, bus, encode, permissions, subjects


class ClusterError(Exception):
    pass


@dataclass
class ServiceProcess:
    name: str
    command: str
    """The ``volt`` subcommand it runs (api, scheduler, agent)."""
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str]

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout_s: float = 15.0) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        """SIGKILL: no goodbye, no cleanup (its engine dies with it)."""
        self.process.kill()
        self.process.wait()


class SpiffeIssuer(Protocol):
    """An issuer of bus identities outside Volt, reached over the SPIFFE
    Workload API: a SPIRE (``tests/support/spire.py``)."""

    socket: Path
    trust_domain: str

    def register(self, spiffe_id: str, *, ttl_s: int = 3600,
                 dns: tuple[str, ...] = ()) -> None: ...

    def svid_files(self, spiffe_id: str, folder: Path) -> SvidFiles: ...


class Cluster:
    def __init__(
        self,
        root: Path,
        *,
        heartbeat_interval_s: float = 0.3,
        engine_mode: str = "model",
        store_url: str | None = None,
        model_cache: Path | None = None,
        extra_env: dict[str, str] | None = None,
        api_port: int | None = None,
        secure_bus: bool = True,
        spiffe_issuer: SpiffeIssuer | None = None,
        svid_ttl_s: int = 3600,
    ) -> None:
        """``secure_bus``: every process on the bus as its own least-privilege
        user (mutual TLS with an X.509-SVID each), as in production; the SVIDs
        come from Volt's workload CA, or with ``spiffe_issuer`` from that SPIRE
        (lasting ``svid_ttl_s``; the services take them from its Workload API)."""
        self.root = root
        self.data_dir = root / "data"
        self.logs = root / "logs"
        self.heartbeat_interval_s = heartbeat_interval_s
        self.engine_mode = engine_mode
        self.store_url = store_url or f"sqlite+aiosqlite:///{self.data_dir / 'volt.db'}"
        self.model_cache = model_cache
        self.extra_env = dict(extra_env or {})
        """``VOLT_*`` settings every service gets (``VOLT_AUDIT_...``)."""
        if spiffe_issuer is not None:
            self.extra_env["VOLT_IDENTITY_TRUST_DOMAIN"] = spiffe_issuer.trust_domain
        self.secure_bus = secure_bus
        self.spiffe_issuer = spiffe_issuer if secure_bus else None
        self.svid_ttl_s = svid_ttl_s
        self._registered: set[str] = set()
        self._sources: list[WorkloadApiSvid] = []
        self.bus: BusAuthority | None = None
        # SPIRE names the bus's certificate by DNS names only (no IP addresses).
        self.nats = NatsServer(store_dir=root / "nats", log_file=root / "nats.log",
                               host="localhost" if self.spiffe_issuer else "127.0.0.1")
        self.services: dict[str, ServiceProcess] = {}
        self.api_port = api_port or free_port()
        self.api_key = ""

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Cluster:
        self.logs.mkdir(parents=True, exist_ok=True)
        model_dir = self.data_dir / "models" / MODEL_ID
        if self.model_cache is not None and not model_dir.exists():
            model_dir.parent.mkdir(parents=True, exist_ok=True)
            model_dir.symlink_to(ensure_built(self.model_cache))
        ensure_built(model_dir)
        self.api_key = asyncio.run(self._bootstrap())
        if self.secure_bus:
            config = self.config
            self.bus = BusAuthority(config.data_path / "bus", config.secrets_path(),
                                    config.identity.trust_domain)
            self.nats.authority = self.bus
            if self.spiffe_issuer is not None:
                bus_id = workload.bus_id(config.identity.trust_domain)
                self.spiffe_issuer.register(bus_id, dns=("localhost",))
                self.bus.server_tls = self.spiffe_issuer.svid_files(
                    bus_id, config.data_path / "bus" / "nats-spire")
        scheduler = self._bus_identity(
            workload.scheduler_id(self.trust_domain), lambda bus: bus.scheduler())
        self.nats.start()
        self._spawn("scheduler", "scheduler", scheduler)
        return self

    @property
    def trust_domain(self) -> str:
        return self.config.identity.trust_domain

    def _bus_identity(self, spiffe_id: str,
                      issue: Callable[[BusAuthority], Path]) -> dict[str, str]:
        """A new process's SVID (the bus learns its user at the next reload)."""
        if self.bus is None:
            return {}
        if self.spiffe_issuer is not None:
            if spiffe_id not in self._registered:
                self.spiffe_issuer.register(spiffe_id, ttl_s=self.svid_ttl_s)
                self._registered.add(spiffe_id)
            self.bus.admit(spiffe_id)
            return {"VOLT_NATS_SPIFFE_SOCKET": str(self.spiffe_issuer.socket)}
        return {"VOLT_NATS_SVID_DIR": str(issue(self.bus))}

    async def connect_bus(self) -> Client:
        """A NATS client that may publish and read everything (an operator's
        identity on the secured bus): for tests that watch or attack the bus."""
        if self.bus is None:
            return await nats.connect(self.nats.url)
        env = self._bus_identity(workload.operator_id(self.trust_domain, "tests"),
                                 lambda bus: bus.operator("tests"))
        self.nats.reload()
        if self.spiffe_issuer is not None:
            source = await asyncio.to_thread(
                WorkloadApiSvid, str(self.spiffe_issuer.socket), self.trust_domain,
                lambda identity: identity.role == "operator")
            self._sources.append(source)
            tls = source.follow()
        else:
            tls = bus.tls_context(Path(env["VOLT_NATS_SVID_DIR"]))
        return await bus.connect(self.nats.url, "tests", tls=tls,
                                 inbox_prefix=permissions.inbox_for("operator", "tests"),
                                 connect_timeout_s=10)

    @property
    def config(self) -> VoltConfig:
        """The configuration the services run with (data folder, store, keyring)."""
        return load_config(env=self.env({}))

    async def _bootstrap(self) -> str:
        db = Database(self.store_url)
        try:
            await db.upgrade()
            return await ensure_dev_key(self.config, db, self.data_dir / "dev-api-key")
        finally:
            await db.close()

    def stop(self) -> None:
        for name in sorted(self.services,
                           key=lambda n: (not n.startswith("api"), n == "scheduler")):
            self.services[name].stop()
        self.nats.stop()
        for source in self._sources:
            source.close()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- services --------------------------------------------------------------

    def env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOLT_")}
        env.update({
            "VOLT_DATA_DIR": str(self.data_dir),
            "VOLT_NATS_URL": self.nats.url,
            "VOLT_STORE_URL": self.store_url,
            "VOLT_API_PORT": str(self.api_port),
            "VOLT_AGENT_HEARTBEAT_INTERVAL_S": str(self.heartbeat_interval_s),
            "VOLT_AGENT_ENGINE_MODE": self.engine_mode,
            "VOLT_LOG_LEVEL": "info",
            "PYTHONUNBUFFERED": "1",
            # Test hosts have no TPM: nodes run visibly not_attested unless a
            # test gives an agent one (VOLT_AGENT_TPM) and requires attestation.
            "VOLT_ATTESTATION_REQUIRED": "0",
        })
        env.update(self.extra_env)
        env.update(extra)
        return env

    def restart(self, name: str, *, kill: bool = False) -> ServiceProcess:
        """Stop a service (SIGTERM, or SIGKILL with ``kill``) and start it again as it was."""
        service = self.services[name]
        if kill:
            service.kill()
        else:
            service.stop()
        return self._start(name, service.command, service.env)

    def _spawn(self, name: str, command: str, extra: dict[str, str]) -> ServiceProcess:
        return self._start(name, command, self.env(extra))

    def _start(self, name: str, command: str, env: dict[str, str]) -> ServiceProcess:
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "volt", command], env=env, stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
            )
        service = ServiceProcess(name, command, process, log_path, env)
        self.services[name] = service
        return service

    def add_agent(self, node_id: str, *, metro: str = "local", tier: str = "standard",
                  enrolling: bool = False, **settings: str) -> ServiceProcess:
        """``enrolling``: the agent gets only an enrolment SVID and must earn its
        node SVID by a passing attestation (give it a ``tpm``)."""
        extra = {
            "VOLT_AGENT_NODE_ID": node_id, "VOLT_AGENT_METRO": metro, "VOLT_AGENT_TIER": tier,
        }
        extra.update({f"VOLT_AGENT_{k.upper()}": v for k, v in settings.items()})
        if enrolling and self.spiffe_issuer is not None:
            raise ClusterError("under SPIRE, SPIRE attests nodes: there is no enrolment SVID")
        extra.update(self._bus_identity(
            workload.node_id(self.trust_domain, metro, node_id),
            lambda bus: bus.enrolling_node(metro, node_id) if enrolling
            else bus.node(metro, node_id)))
        self.nats.reload()
        return self._spawn(node_id, "agent", extra)

    def start_api(self, name: str = "api", *, server: str | None = None,
                  port: int | None = None, **settings: str) -> ServiceProcess:
        """An API process (``server``: the ASGI server; None for the default;
        ``settings``: api.* values). The one named "api" listens on ``api_port``."""
        port = port or (self.api_port if name == "api" else free_port())
        extra = {"VOLT_API_PORT": str(port)}
        if server is not None:
            extra["VOLT_API_SERVER"] = server
        extra.update({f"VOLT_API_{k.upper()}": v for k, v in settings.items()})
        extra.update(self._bus_identity(workload.api_id(self.trust_domain, name),
                                        lambda bus: bus.api(name)))
        self.nats.reload()
        return self._spawn(name, "api", extra)

    def start_redfish_proxy(self, name: str = "redfish-proxy", *, port: int | None = None,
                            **settings: str) -> tuple[ServiceProcess, int]:
        """Vault's Redfish proxy (on the bus as an API replica named ``name``;
        ``settings``: vault.* values); returns the process and its port."""
        port = port or free_port()
        extra = {"VOLT_VAULT_PROXY_PORT": str(port), "VOLT_VAULT_PROXY_REPLICA_ID": name}
        extra.update({f"VOLT_VAULT_{k.upper()}": v for k, v in settings.items()})
        extra.update(self._bus_identity(workload.api_id(self.trust_domain, name),
                                        lambda bus: bus.api(name)))
        self.nats.reload()
        return self._spawn(name, "redfish-proxy", extra), port

    def add_key(self, org: str, *, role: Role = Role.OWNER, mode: Mode = "live",
                scopes: frozenset[Scope] = frozenset(Scope), limits: Limits = NO_LIMITS) -> str:
        """A new API key for the org called ``org`` (created if new)."""

        async def issue() -> str:
            db = Database(self.store_url)
            try:
                org_id = (await Orgs(db).ensure(org)).id
                issued = await api_keys(self.config, db).create(
                    org_id, "test", role=role, mode=mode, scopes=scopes, limits=limits)
                return issued.key
            finally:
                await db.close()

        return asyncio.run(issue())

    def org_id(self, org: str) -> str:
        async def find() -> str:
            db = Database(self.store_url)
            try:
                return (await Orgs(db).ensure(org)).id
            finally:
                await db.close()

        return asyncio.run(find())

    def set_catalog(self, org: str, catalog: Catalog) -> None:
        """Limit what ``org`` may use (before its key is first used)."""

        async def store() -> None:
            db = Database(self.store_url)
            try:
                await Orgs(db).set_catalog(org, catalog)
            finally:
                await db.close()

        asyncio.run(store())

    def api_port_of(self, name: str) -> int:
        return int(self.services[name].env["VOLT_API_PORT"])

    def generating(self, nodes: list[str], timeout_s: float = 20) -> str:
        """The node among ``nodes`` whose engine is generating right now."""
        from volt.agent.engine.client import EngineClient, EngineUnavailable

        async def find() -> str:
            engines = {n: EngineClient(self.engine_socket(n)) for n in nodes}
            try:
                deadline = time.monotonic() + timeout_s
                while time.monotonic() < deadline:
                    for node, engine in engines.items():
                        with contextlib.suppress(EngineUnavailable):  # still starting
                            if (await engine.load()).running:
                                return node
                    await asyncio.sleep(0.02)
                raise ClusterError("no engine started generating")
            finally:
                for engine in engines.values():
                    await engine.close()

        return asyncio.run(find())

    def engine_process(self, node_id: str) -> psutil.Process:
        """The CPU engine child of ``node_id``'s agent, as it runs now."""
        agent = psutil.Process(self.services[node_id].pid)
        for child in agent.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "volt.agent.engine.cpu_server" in " ".join(child.cmdline()):
                    return child
        raise ClusterError(f"{node_id} runs no CPU engine now")

    def engine_socket(self, node_id: str) -> Path:
        return load_config(env=self.services[node_id].env).engine_socket()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}/v1"

    async def view(self, nc: Client | None = None) -> PlacementView:
        """The scheduler's placement view, asked over the bus (on ``nc``, or on a
        connection of its own)."""
        own = nc is None
        nc = nc or await self.connect_bus()
        try:
            reply = await nc.request(subjects.SCHED_VIEW_GET, encode(ViewQuery()), timeout=5)
        finally:
            if own:
                await nc.close()
        answer = SCHEDULER.decode(reply.data)
        if not isinstance(answer, PlacementView):
            raise ClusterError(f"the scheduler answered {answer!r}")
        return answer

    # -- waiting ---------------------------------------------------------------

    def wait_placeable(self, nodes: list[str], *, timeout_s: float = 120.0) -> None:
        """Until every one of ``nodes`` is ready and serving the tiny model."""

        async def wait() -> None:
            nc = await self.connect_bus()
            try:
                deadline = time.monotonic() + timeout_s
                while True:
                    ready = {n.node_id for n in (await self.view(nc)).nodes
                             if n.state == "ready" and MODEL_ID in n.models}
                    if ready >= set(nodes):
                        return
                    if time.monotonic() > deadline:
                        raise ClusterError(f"not placeable within {timeout_s}s: "
                                           f"{sorted(set(nodes) - ready)}")
                    await asyncio.sleep(0.3)
            finally:
                await nc.close()

        asyncio.run(wait())

    def request(
        self, path: str, body: dict[str, object] | None = None, *, key: str | None = None,
        timeout_s: float = 30.0, port: int | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """A plain HTTP call to the API: (status, headers, body)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"http://127.0.0.1:{port or self.api_port}{path}", data=data,
            headers={"Authorization": f"Bearer {key if key is not None else self.api_key}",
                     "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout_s) as resp:
                return resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def wait_routable(self, *, metro: str | None = None, timeout_s: float = 120.0,
                      port: int | None = None, embedding_model: str | None = None) -> None:
        """Until a real chat completion (pinned to ``metro``) succeeds, or with
        ``embedding_model``, a real embedding."""
        path = "/v1/chat/completions"
        body: dict[str, object] = {
            "model": MODEL_ID, "max_tokens": 1,
            "messages": [{"role": "user", "content": "ping"}],
        }
        if embedding_model is not None:
            path, body = "/v1/embeddings", {"model": embedding_model, "input": "ping"}
        if metro is not None:
            body["volt"] = {"metro": metro}
        deadline = time.monotonic() + timeout_s
        status = 0
        while time.monotonic() < deadline:
            for service in self.services.values():
                if not service.alive():
                    raise ClusterError(f"{service.name} exited:\n{service.log_text()[-4000:]}")
            with contextlib.suppress(OSError):
                status, _, _ = self.request(path, body, timeout_s=10, port=port)
                if status == 200:
                    return
            time.sleep(0.1)
        logs = "\n".join(f"--- {s.name}\n{s.log_text()[-2000:]}" for s in self.services.values())
        raise ClusterError(f"not routable (last status {status}) within {timeout_s}s\n{logs}")
