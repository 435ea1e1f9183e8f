"""``volt scheduler``: the scheduler process."""

from __future__ import annotations

import asyncio
import logging

from volt.config import ConfigError, VoltConfig
from volt.finetune.jobs import FineTuning
from volt.forge.kube import KubeScope
from volt.forge.leases import Forge
from volt.identity.audit_log import AuditLog
from volt.identity.audit_writer import AuditWriter
from volt.identity.bus_authority import BusAuthority
from volt.identity.bus_credentials import bus_credentials
from volt.identity.keyring import Keyring
from volt.identity.orgs import Orgs
from volt.placement.gpus import GpuPool
from volt.scheduler.attestation import AttestationService
from volt.scheduler.metering import UsageSink
from volt.scheduler.node_table import NodeTable
from volt.scheduler.service import Scheduler
from volt.store import Database, Inventory, UsageLedger
from volt.store.resources import ResourceStore
from volt.vault.credentials import CredentialBox
from volt.vault.racks import Vault
from volt.vault.redfish import connect_bmc
from volt.wire import bus, permissions

log = logging.getLogger(__name__)


async def run_scheduler(config: VoltConfig) -> None:
    if not config.nats.url:
        raise ConfigError("nats.url: the scheduler needs a NATS URL (VOLT_NATS_URL)")
    db = Database(config.store_url())
    await db.upgrade()  # the scheduler owns the store, so it migrates it
    orgs = Orgs(db)
    forge = Forge(
        ResourceStore(db), GpuPool(),
        KubeScope.from_kubeconfig(config.forge.kubeconfig) if config.forge.kubeconfig else None,
        config.forge, quota_of=orgs.gpu_quota)
    keyring = Keyring(config.secrets_path())
    vault = Vault(ResourceStore(db), config.vault, CredentialBox.from_config(config),
                  proxy_key=keyring.vault_proxy_key(),
                  signing_key=keyring.verifier_signing_key(),
                  verdict_ttl_s=config.attestation.verdict_ttl_s,
                  connect=lambda url, user, password, verify: connect_bmc(
                      url, user, password, verify, timeout_s=config.vault.bmc_timeout_s))
    scheduler = Scheduler(
        NodeTable(missed_heartbeats=config.scheduler.missed_heartbeats,
                  allow_unsealed=config.scheduler.allow_unsealed,
                  require_attestation=config.attestation.required),
        Inventory(db),
        view_interval_s=config.scheduler.view_interval_s,
        sweep_interval_s=config.scheduler.sweep_interval_s,
        metros=config.scheduler.metros,
        tiers=config.scheduler.tiers,
        forge=forge,
        vault=vault,
        finetune=FineTuning(ResourceStore(db), config.finetune),
    )
    forge.spark_inflight = scheduler.spark_inflight
    forge.handed_over = scheduler.handed_over
    forge.on_change = scheduler.changed
    forge.on_assign = scheduler.assign
    authority = BusAuthority(config.data_path / "bus", config.secrets_path(),
                             config.identity.trust_domain) \
        if config.attestation.certify_nodes else None
    attestation = AttestationService.from_settings(
        config.attestation, scheduler.table, keyring.verifier_signing_key(), scheduler.changed,
        authority)
    vault.verdict_of = attestation.verdicts.get
    sink = UsageSink(UsageLedger(db))
    # The audit log's single writer (the API replicas only publish events).
    audit = AuditWriter(AuditLog(db), keyring.audit_signing_key(),
                        checkpoint_every=config.audit.checkpoint_every,
                        checkpoint_interval_s=config.audit.checkpoint_interval_s)
    credentials = bus_credentials(config, "scheduler")
    nc = await bus.connect(config.nats.url, name="volt-scheduler", tls=credentials.tls(),
                           inbox_prefix=permissions.inbox_for("scheduler", ""))
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(scheduler.run(nc))
            tasks.create_task(sink.run(nc))
            tasks.create_task(audit.run(nc))
            await attestation.run(nc)
    finally:
        await forge.stop()
        await vault.stop()
        await bus.close(nc)
        credentials.close()
        await db.close()
