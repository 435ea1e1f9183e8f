"""The secured bus of one Volt installation: each process's SVID and nats-server's users.

Whoever launches Volt's processes on one machine (``volt up``, the test
cluster) or provisions a fleet (``volt admin bus``) holds the workload CA. For
every process it issues an X.509-SVID into a folder of its own (the process's
``nats.svid_dir``) and adds a bus user for that SPIFFE ID with its role's
permissions (``volt/wire/permissions.py``); ``config_text`` is nats-server's
configuration: mutual TLS required, ``verify_and_map`` (the certificate's
SPIFFE ID is the user), and nothing allowed to an identity it does not list.
Adding a process later rewrites the configuration; ``NatsServer.reload``
makes a running server take it (SIGHUP; connections stay up).

Under SPIRE (``nats.spiffe_socket``) SPIRE issues every SVID, the bus's own
included: the authority then only admits SPIFFE IDs (``admit``) and writes the
configuration around the server certificate and trust bundle it is given
(``server_tls``).

The admitted SPIFFE IDs are kept in ``admitted.json`` beside the SVIDs, so an
operator can issue identities one at a time (``volt admin bus issue``) and
write the server's configuration for all of them (``volt admin bus config``);
permissions are always derived from the ID's role, never stored.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path

from volt.identity import workload
from volt.identity.workload_ca import SvidFiles, WorkloadCA
from volt.wire import permissions
from volt.wire.permissions import Permissions

SVID_LIFETIME = dt.timedelta(days=30)
"""Launcher-issued SVIDs last this long and are not renewed under a running
process (a restart issues new ones); where that matters, SPIRE is the issuer
and rotates them (``nats.spiffe_socket``)."""


@dataclass(frozen=True)
class BusUser:
    spiffe_id: str
    permissions: Permissions


def permissions_for(identity: workload.WorkloadIdentity) -> Permissions:
    match identity.role:
        case "node":
            return permissions.node(identity.metro, identity.name)
        case "enrol":
            return permissions.enrolling(identity.name)
        case "api":
            return permissions.api(identity.name)
        case "scheduler":
            return permissions.scheduler()
        case "operator":
            return permissions.operator()
    raise ValueError(f"no bus permissions for a {identity.role}")


class BusAuthority:
    def __init__(self, folder: Path, secrets: Path, trust_domain: str) -> None:
        self.folder = folder
        self.trust_domain = trust_domain
        self.ca = WorkloadCA.in_folder(secrets, trust_domain)
        self._admitted = folder / "admitted.json"
        self.users: dict[str, BusUser] = {}
        if self._admitted.exists():
            for spiffe_id in json.loads(self._admitted.read_text()):
                self._admit(spiffe_id)
        self.server_tls: SvidFiles | None = None
        """The bus's certificate and trust bundle from another issuer (SPIRE);
        None: issued by the workload CA."""

    def admit(self, spiffe_id: str) -> None:
        """Let an identity another issuer (SPIRE) gives a process onto the bus,
        with its role's permissions."""
        self._admit(spiffe_id)
        self._save()

    def _admit(self, spiffe_id: str) -> None:
        identity = workload.parse_id(spiffe_id, self.trust_domain)
        self.users[spiffe_id] = BusUser(spiffe_id, permissions_for(identity))

    def _issue(self, spiffe_id: str, folder_name: str) -> Path:
        folder = self.folder / folder_name
        self.ca.issue(spiffe_id, lifetime=SVID_LIFETIME).write(folder)
        self._admit(spiffe_id)
        self._save()
        return folder

    def _save(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        temporary = self._admitted.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(sorted(self.users), indent=1) + "\n")
        temporary.replace(self._admitted)

    def node(self, metro: str, node_id: str) -> Path:
        return self._issue(workload.node_id(self.trust_domain, metro, node_id),
                           f"node-{node_id}")

    def enrolling_node(self, metro: str, node_id: str) -> Path:
        """Admit a node that earns its SVID by attestation: it gets only the
        enrolment identity now; the node's own is admitted to the bus (so it can
        connect once the scheduler has certified it) but not issued."""
        self._admit(workload.node_id(self.trust_domain, metro, node_id))
        return self._issue(workload.enrol_id(self.trust_domain, metro, node_id),
                           f"enrol-{node_id}")

    def admitted_node(self, node_id: str) -> str | None:
        """The SPIFFE ID under which ``node_id`` is admitted (re-read from disk:
        the operator admits nodes while the scheduler runs); None if it is not."""
        if self._admitted.exists():
            for spiffe_id in json.loads(self._admitted.read_text()):
                self._admit(spiffe_id)
        for spiffe_id in self.users:
            identity = workload.parse_id(spiffe_id, self.trust_domain)
            if identity.role == "node" and identity.name == node_id:
                return spiffe_id
        return None

    def api(self, replica_id: str) -> Path:
        return self._issue(workload.api_id(self.trust_domain, replica_id), f"api-{replica_id}")

    def scheduler(self) -> Path:
        return self._issue(workload.scheduler_id(self.trust_domain), "scheduler")

    def operator(self, name: str) -> Path:
        return self._issue(workload.operator_id(self.trust_domain, name), f"operator-{name}")

    def server(self, host: str) -> SvidFiles:
        """The bus's own certificate (for ``host`` and localhost)."""
        if self.server_tls is None:
            folder = self.folder / "nats"
            hosts = tuple(dict.fromkeys((host, "localhost", "127.0.0.1")))
            self.server_tls = self.ca.issue(workload.bus_id(self.trust_domain), hosts=hosts,
                                            lifetime=SVID_LIFETIME).write(folder)
        return self.server_tls

    def config_text(self, *, host: str, port: int, store_dir: Path | None) -> str:
        """nats-server's configuration (JSON, which its parser reads)."""
        tls = self.server(host)
        config: dict[str, object] = {
            "host": host,
            "port": port,
            "tls": {
                "cert_file": str(tls.certificate), "key_file": str(tls.key),
                "ca_file": str(tls.bundle), "verify_and_map": True, "timeout": 5,
            },
            "authorization": {"users": [
                {"user": user.spiffe_id, "permissions": user.permissions.as_config()}
                for user in self.users.values()
            ]},
        }
        if store_dir is not None:
            config["jetstream"] = {"store_dir": str(store_dir)}
        return json.dumps(config, indent=2) + "\n"

