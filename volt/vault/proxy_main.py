"""``volt redfish-proxy``: the process tenants' Redfish clients talk to.

It holds what no API replica needs: the key that opens BMC passwords and
the route to the BMCs' network. It reads racks from the store (the scheduler
writes them) and is on the bus as an API replica only to publish its audit
events; a call that could not be audited is not served.
"""

from __future__ import annotations

import logging

from volt.config import ConfigError, VoltConfig
from volt.control_api.main import serve_uvicorn
from volt.identity.audit import AuditRecorder
from volt.identity.bus_credentials import bus_credentials
from volt.identity.keyring import Keyring
from volt.store import Database
from volt.store.resources import ResourceStore
from volt.vault.credentials import CredentialBox
from volt.vault.redfish_proxy import Proxy, create_proxy_app
from volt.wire import bus, permissions

log = logging.getLogger(__name__)


async def run_redfish_proxy(config: VoltConfig) -> None:
    if not config.nats.url:
        raise ConfigError("nats.url: the Redfish proxy needs a NATS URL (its audit events)")
    vault = config.vault
    credentials = bus_credentials(config, "api", name=vault.proxy_replica_id)
    nc = await bus.connect(config.nats.url, name=f"volt-redfish-proxy-{vault.proxy_replica_id}",
                           tls=credentials.tls(),
                           inbox_prefix=permissions.inbox_for("api", vault.proxy_replica_id))
    db = Database(config.store_url())
    recorder = AuditRecorder()
    await recorder.start(nc)
    proxy = Proxy(ResourceStore(db), CredentialBox.from_config(config),
                  Keyring(config.secrets_path()).vault_proxy_key(),
                  trust_domain=config.identity.trust_domain, record=recorder.record,
                  can_audit=lambda: recorder.buffered < recorder.max_buffered,
                  bmc_timeout_s=vault.bmc_timeout_s)
    log.info("redfish proxy listening", extra={
        "bind": f"{vault.proxy_host}:{vault.proxy_port}", "tls": bool(vault.proxy_tls_cert)})
    try:
        await serve_uvicorn(create_proxy_app(proxy), vault.proxy_host, vault.proxy_port,
                            tls_cert=vault.proxy_tls_cert, tls_key=vault.proxy_tls_key)
    finally:
        await recorder.close()  # what is buffered is published before the process ends
        await proxy.close()
        await db.close()
        await bus.close(nc)
        credentials.close()
