"""``volt agent``: the node agent process (engine supervisors + NATS agent)."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
from pathlib import Path

from volt.agent.adapters import Adapters
from volt.agent.attestation import AttestationClient
from volt.agent.engine import (
    VLLM_ENV,
    cpu_engine_command,
    embedding_engine_command,
    vllm_engine_command,
)
from volt.agent.engine.client import EngineClient
from volt.agent.engine.supervisor import EngineSupervisor
from volt.agent.engine.tiny_model import MODEL_ID, ensure_built
from volt.agent.seal import SealUnavailable, check_available
from volt.agent.service import Agent, EngineHandle
from volt.agent.telemetry import detect
from volt.agent.training import Training
from volt.config import ConfigError, VoltConfig
from volt.finetune.blobs import Blobs, data_key
from volt.identity.bus_credentials import bus_credentials
from volt.identity.workload_ca import Svid
from volt.wire import bus, encode, permissions, subjects

log = logging.getLogger(__name__)


def _supervisors(config: VoltConfig) -> list[tuple[str, EngineSupervisor]]:
    """(model, supervisor) for each engine this agent runs."""
    timeout = config.agent.engine_startup_timeout_s
    socket = config.engine_socket()
    # The sockets' folder is private (0700): only this user reaches the engines.
    socket.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    sealed = not config.agent.insecure_unsealed
    probing = functools.partial(EngineSupervisor,
                                probe_interval_s=config.agent.engine_probe_interval_s,
                                hang_timeout_s=config.agent.engine_hang_timeout_s)
    if config.agent.engine == "vllm":
        main = probing(vllm_engine_command(config), EngineClient(socket),
                       startup_timeout_s=timeout, env={**os.environ, **VLLM_ENV}, sealed=sealed)
    else:
        main = probing(cpu_engine_command(config), EngineClient(socket),
                       startup_timeout_s=timeout, sealed=sealed)
    engines = [(config.agent.model, main)]
    if config.agent.embedding_model:
        if config.agent.embedding_model == config.agent.model:
            raise ConfigError("agent.embedding_model: must differ from agent.model")
        engines.append((config.agent.embedding_model, probing(
            embedding_engine_command(config), EngineClient(config.embedding_socket()),
            startup_timeout_s=timeout, sealed=sealed,
        )))
    return engines


async def _earn_svid(config: VoltConfig, node_id: str, enrol_dir: Path) -> Path:
    """Attest as an enrolling node until the scheduler certifies this node; the
    node's SVID goes to ``<enrol_dir>/node`` (and lasts until the next start)."""
    client = AttestationClient(node_id, config.agent.tpm, config.agent.event_log)
    nc = await bus.connect(config.nats.url, name=f"volt-agent-{node_id}-enrol",
                           svid_dir=enrol_dir, inbox_prefix=permissions.inbox_for("node", node_id))
    backoff = 1.0
    try:
        while True:
            try:
                svid = await client.certify(nc)
                break
            except Exception as exc:  # a failing verdict, the scheduler away: retry
                log.warning("waiting for attestation to earn the bus SVID: %s", exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)
    finally:
        await bus.close(nc)
    log.info("bus SVID earned by attestation", extra={"spiffe_id": svid.spiffe_id})
    return svid.write(enrol_dir / "node").certificate.parent


async def run_agent(config: VoltConfig) -> None:
    if not config.nats.url:
        raise ConfigError("nats.url: the agent needs a NATS URL (VOLT_NATS_URL)")
    if config.agent.model == MODEL_ID:
        await asyncio.to_thread(ensure_built, config.model_dir())
    node_id = config.node_id()
    # Under SPIRE, SPIRE attests the node before it issues the node's SVID; the
    # enrolment identity (attestation earns the node SVID) is Volt's own CA's.
    roles = ("node",) if config.nats.spiffe_socket else ("node", "enrol")
    credentials = bus_credentials(config, *roles, name=node_id)
    svid_dir, identity = credentials.folder, credentials.identity
    if identity is not None and (identity.name, identity.metro) != (node_id, config.agent.metro):
        raise ConfigError(
            f"the bus SVID is node {identity.name} in metro {identity.metro}, but "
            f"this agent is configured as node {node_id} in metro {config.agent.metro}")
    if identity is not None and identity.role == "enrol":
        if not config.agent.tpm:
            raise ConfigError("nats.svid_dir holds an enrolment SVID, which only attestation "
                              "turns into the node's: set agent.tpm")
        assert svid_dir is not None
        svid_dir = await _earn_svid(config, node_id, svid_dir)
        earned = True
    else:
        earned = False
    tls = bus.tls_context(svid_dir) if svid_dir is not None else credentials.tls()

    def renew(svid: Svid) -> None:
        """A new SVID from this attestation: the next reconnection presents it."""
        assert svid_dir is not None
        assert tls is not None
        files = svid.write(svid_dir)
        tls.load_cert_chain(files.certificate, files.key)

    if not config.agent.insecure_unsealed:
        try:
            check_available()
        except SealUnavailable as exc:
            raise ConfigError(
                f"agent: {exc}. Engines must run sealed (a network namespace of their own): "
                "run the agent as root, or for development only set "
                "agent.insecure_unsealed = true (VOLT_AGENT_INSECURE_UNSEALED=1)") from None
    supervisors = _supervisors(config)
    blobs: list[Blobs] = []  # made once the bus is up

    def blob_store() -> Blobs | None:
        return blobs[0] if blobs else None

    work = config.data_path / "finetune" / node_id
    model_dirs = {config.agent.model: config.model_dir()} \
        if config.agent.engine == "cpu" and config.agent.engine_mode == "model" else {}
    training = Training(
        node_id=node_id, metro=config.agent.metro, work_dir=work / "jobs",
        model_dirs=model_dirs, settings=config.finetune, blobs=blob_store,
        publish=lambda message: nc.publish(subjects.node_event(node_id, "training"),
                                           encode(message)),
        sealed=not config.agent.insecure_unsealed, threads=config.agent.engine_threads)
    agent = Agent(
        node_id=node_id, metro=config.agent.metro, tier=config.agent.tier,
        engines=[EngineHandle(model, sup.client, sup.ready, sup.seal_check, pause=sup.pause,
                              resume=sup.resume, stopped=sup.stopped)
                 for model, sup in supervisors],
        telemetry=detect(), heartbeat_interval_s=config.agent.heartbeat_interval_s,
        max_inflight=config.agent.max_inflight, engine_kind=config.agent.engine,
        capacity=config.agent.capacity, insecure=config.agent.insecure_unsealed,
        rack=config.agent.rack, nvlink_domain=config.agent.nvlink_domain,
        stream_interval_s=config.agent.stream_interval_ms / 1000,
        attestation=AttestationClient(
            node_id, config.agent.tpm, config.agent.event_log,
            interval_s=config.agent.attestation_interval_s,
            renew=renew if earned else None) if config.agent.tpm else None,
        training=training,
        adapters=Adapters(metro=config.agent.metro, folder=work / "adapters", blobs=blob_store,
                          max_loaded=config.agent.max_adapters),
    )
    nc = await bus.connect(config.nats.url, name=f"volt-agent-{node_id}", tls=tls,
                           inbox_prefix=permissions.inbox_for("node", node_id))
    blobs.append(Blobs(nc, data_key(config)))
    log.info("agent started", extra={"node_id": node_id, "metro": config.agent.metro,
                                     "models": [model for model, _ in supervisors]})
    try:
        async with asyncio.TaskGroup() as tasks:
            for _, supervisor in supervisors:
                tasks.create_task(supervisor.run())
            tasks.create_task(agent.run(nc))
    finally:
        for _, supervisor in supervisors:
            await supervisor.client.close()
        await bus.close(nc)
        credentials.close()
