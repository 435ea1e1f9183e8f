"""A real SPIRE for tests: spire-server and one spire-agent on loopback.

    with Spire(tmp_path, trust_domain="volt.test") as spire:
        spire.register("spiffe://volt.test/service/scheduler", ttl_s=20)
        # a process given nats.spiffe_socket = spire.socket gets that SVID

The agent attests to the server with a join token; workloads are attested by
the Unix workload attestor, and every entry selects ``unix:uid:<our uid>``, so
every test process is offered every SVID and picks its own (as Volt's
processes do). An entry's ``ttl_s`` is its X.509-SVID lifetime: the agent
rotates an SVID at half of it, which is how tests watch a rotation happen.

Binaries come from ``tests/support/build-spire`` (built once with Go, cached).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from types import TracebackType

from cryptography.hazmat.primitives.serialization import Encoding
from support.go_built import built

from volt.identity.workload_ca import SvidFiles
from volt.processes import _die_with_parent
from volt.up.nats_server import free_port

HERE = Path(__file__).resolve().parent
BUILD_SCRIPT = HERE / "build-spire"
READY_TIMEOUT_S = 60.0
AGENT_ID_PATH = "/volt-test-host"


class SpireError(Exception):
    pass


class Spire:
    def __init__(self, root: Path, *, trust_domain: str) -> None:
        self.root = root
        self.trust_domain = trust_domain
        self.bin = built(BUILD_SCRIPT)
        self.port = free_port()
        self.server_socket = root / "server" / "api.sock"
        self.socket = root / "agent" / "public" / "api.sock"
        """The Workload API (``nats.spiffe_socket``)."""
        self.agent_id = f"spiffe://{trust_domain}/spire/agent/join_token"
        self._processes: list[subprocess.Popen[bytes]] = []

    # -- lifecycle -------------------------------------------------------------

    def start(self) -> Spire:
        for folder in ("server", "agent/public", "logs"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        server_conf = self.root / "server.conf"
        server_conf.write_text(f"""
server {{
  bind_address = "127.0.0.1"
  bind_port = "{self.port}"
  socket_path = "{self.server_socket}"
  trust_domain = "{self.trust_domain}"
  data_dir = "{self.root / 'server'}"
  log_level = "INFO"
  ca_ttl = "24h"
  default_x509_svid_ttl = "1h"
}}
plugins {{
  DataStore "sql" {{
    plugin_data {{
      database_type = "sqlite3"
      connection_string = "{self.root / 'server' / 'datastore.sqlite3'}"
    }}
  }}
  KeyManager "memory" {{ plugin_data {{}} }}
  NodeAttestor "join_token" {{ plugin_data {{}} }}
}}
""")
        self._run("server", "spire-server", "run", "-config", str(server_conf))
        self._wait_healthy("spire-server", "-socketPath", str(self.server_socket))
        token = self.server("token", "generate", "-spiffeID",
                            f"spiffe://{self.trust_domain}{AGENT_ID_PATH}").split()[-1]
        agent_conf = self.root / "agent.conf"
        agent_conf.write_text(f"""
agent {{
  data_dir = "{self.root / 'agent'}"
  log_level = "INFO"
  server_address = "127.0.0.1"
  server_port = "{self.port}"
  socket_path = "{self.socket}"
  trust_domain = "{self.trust_domain}"
  # Trust the server's bundle at first contact: a test has no channel to hand it
  # over beforehand (production sets trust_bundle_path instead).
  insecure_bootstrap = true
}}
plugins {{
  NodeAttestor "join_token" {{ plugin_data {{}} }}
  KeyManager "memory" {{ plugin_data {{}} }}
  WorkloadAttestor "unix" {{ plugin_data {{}} }}
}}
""")
        self._run("agent", "spire-agent", "run", "-config", str(agent_conf), "-joinToken", token)
        self._wait_healthy("spire-agent", "-socketPath", str(self.socket))
        return self

    def _run(self, name: str, binary: str, *args: str) -> None:
        with open(self.root / "logs" / f"{name}.log", "ab") as log:
            self._processes.append(subprocess.Popen(
                [str(self.bin / binary), *args], stdout=log, stderr=log,
                stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent))

    def _wait_healthy(self, binary: str, *args: str) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while True:
            result = subprocess.run([str(self.bin / binary), "healthcheck", *args],
                                    capture_output=True, text=True, check=False)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise SpireError(f"{binary} not healthy within {READY_TIMEOUT_S:.0f}s: "
                                 f"{result.stdout}{result.stderr}; logs in {self.root / 'logs'}")
            time.sleep(0.3)

    def stop(self) -> None:
        for process in reversed(self._processes):
            process.terminate()
        for process in self._processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
        self._processes.clear()

    def __enter__(self) -> Spire:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- registration ----------------------------------------------------------

    def server(self, *args: str) -> str:
        """``spire-server <args>`` against this server; its output."""
        result = subprocess.run(
            [str(self.bin / "spire-server"), args[0], *args[1:], "-socketPath",
             str(self.server_socket)], capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise SpireError(f"spire-server {' '.join(args)}: {result.stdout}{result.stderr}")
        return result.stdout

    def register(self, spiffe_id: str, *, ttl_s: int = 3600, dns: tuple[str, ...] = ()) -> None:
        """An entry for ``spiffe_id`` under this test's agent, for this uid."""
        args = ["entry", "create", "-parentID",
                f"spiffe://{self.trust_domain}{AGENT_ID_PATH}", "-spiffeID", spiffe_id,
                "-selector", f"unix:uid:{os.getuid()}", "-x509SVIDTTL", str(ttl_s)]
        for name in dns:
            args += ["-dns", name]
        self.server(*args)

    def svid_files(self, spiffe_id: str, folder: Path,
                   timeout_s: float = READY_TIMEOUT_S) -> SvidFiles:
        """Fetch ``spiffe_id``'s SVID from the Workload API into ``folder`` (what
        spiffe-helper does for a program that reads files, like nats-server)."""
        from spiffe import TrustDomain, WorkloadApiClient
        from spiffe.errors import PySpiffeError

        deadline = time.monotonic() + timeout_s
        with WorkloadApiClient(f"unix://{self.socket}") as client:
            while True:
                try:
                    context = client.fetch_x509_context()
                    svids = [s for s in context.x509_svids if str(s.spiffe_id) == spiffe_id]
                except PySpiffeError:  # "no identity issued" until the first entry syncs
                    svids = []
                if svids:
                    break
                if time.monotonic() > deadline:  # entries reach the agent at its next sync
                    raise SpireError(f"the Workload API never offered {spiffe_id}")
                time.sleep(0.5)
        folder.mkdir(parents=True, exist_ok=True)
        files = SvidFiles(folder / "svid.pem", folder / "svid-key.pem", folder / "bundle.pem")
        svids[0].save(str(files.certificate), str(files.key), Encoding.PEM)
        bundle = context.x509_bundle_set.get_bundle_for_trust_domain(
            TrustDomain(self.trust_domain))
        assert bundle is not None
        bundle.save(str(files.bundle), Encoding.PEM)
        return files

