"""How a Volt process proves who it is to the bus, from its configuration.

Two issuers, one result (a TLS context and what the certificate says the
process is):

- ``nats.svid_dir``: a folder holding an X.509-SVID from Volt's own workload CA
  (``volt up``, ``volt admin bus issue``), or an agent's enrolment SVID that
  attestation turns into its node SVID;
- ``nats.spiffe_socket``: the SPIFFE Workload API of a local SPIRE agent, which
  issues and rotates the SVID (``spiffe_workload``).

Neither: a plain development bus. A process takes its node or replica name
from its certificate, never from a setting that could disagree with it.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

from volt.config import ConfigError, VoltConfig
from volt.identity.spiffe_workload import WorkloadApiError, WorkloadApiSvid
from volt.identity.workload import WorkloadIdentity, parse_id, spiffe_id_of
from volt.wire import bus


@dataclass
class BusCredentials:
    identity: WorkloadIdentity | None
    """None on a plain development bus."""
    folder: Path | None = None
    """The SVID folder (Volt's CA); None otherwise."""
    workload_api: WorkloadApiSvid | None = None

    def tls(self) -> ssl.SSLContext | None:
        """The context to dial with; call it on the running event loop (a
        Workload API rotation then updates it there)."""
        if self.workload_api is not None:
            return self.workload_api.follow()
        if self.folder is not None:
            return bus.tls_context(self.folder)
        return None

    def close(self) -> None:
        if self.workload_api is not None:
            self.workload_api.close()


def bus_credentials(config: VoltConfig, *roles: str, name: str = "") -> BusCredentials:
    """This process's bus credentials, for one of ``roles`` (and, given ``name``,
    that node or replica); ConfigError when the certificate is for anything else."""
    nats, trust_domain = config.nats, config.identity.trust_domain
    if nats.svid_dir and nats.spiffe_socket:
        raise ConfigError("nats.svid_dir and nats.spiffe_socket: set one, not both")
    if nats.spiffe_socket:
        def wanted(identity: WorkloadIdentity) -> bool:
            return identity.role in roles and (not name or identity.name == name)
        try:
            source = WorkloadApiSvid(nats.spiffe_socket, trust_domain, wanted)
        except WorkloadApiError as exc:
            raise ConfigError(f"nats.spiffe_socket: {exc}") from None
        return BusCredentials(source.identity, workload_api=source)
    if not nats.svid_dir:
        return BusCredentials(None)
    folder = Path(nats.svid_dir)
    try:
        spiffe_id = spiffe_id_of((folder / "svid.pem").read_bytes())
        identity = parse_id(spiffe_id, trust_domain)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"nats.svid_dir: {exc}") from None
    if identity.role not in roles:
        raise ConfigError(f"nats.svid_dir holds the SVID of a {identity.role} ({spiffe_id}), "
                          f"not of a {' or '.join(roles)}")
    return BusCredentials(identity, folder=folder)
