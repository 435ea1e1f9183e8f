"""``volt agent``: the node agent process (engine supervisor + NATS agent)."""

from __future__ import annotations

import asyncio
import logging

from volt.agent.engine import cpu_engine_command
from volt.agent.engine.client import EngineClient
from volt.agent.engine.supervisor import EngineSupervisor
from volt.agent.engine.tiny_model import MODEL_ID, ensure_built
from volt.agent.service import Agent
from volt.agent.telemetry import detect
from volt.config import ConfigError, VoltConfig
from volt.wire import bus

log = logging.getLogger(__name__)


async def run_agent(config: VoltConfig) -> None:
    if not config.nats.url:
        raise ConfigError("nats.url: the agent needs a NATS URL (VOLT_NATS_URL)")
    if config.agent.engine != "cpu":
        raise ConfigError("agent.engine: only the `cpu` engine is available in this build")
    if config.agent.model == MODEL_ID:
        await asyncio.to_thread(ensure_built, config.model_dir())
    node_id = config.node_id()
    client = EngineClient(config.engine_socket())
    supervisor = EngineSupervisor(
        cpu_engine_command(config), client,
        startup_timeout_s=config.agent.engine_startup_timeout_s,
    )
    agent = Agent(
        node_id=node_id, metro=config.agent.metro, tier=config.agent.tier,
        models=[config.agent.model], engine=client, engine_ready=supervisor.ready,
        telemetry=detect(), heartbeat_interval_s=config.agent.heartbeat_interval_s,
        max_inflight=config.agent.max_inflight, engine_kind=config.agent.engine,
    )
    nc = await bus.connect(config.nats.url, name=f"volt-agent-{node_id}")
    log.info("agent started", extra={"node_id": node_id, "metro": config.agent.metro})
    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(supervisor.run())
            tasks.create_task(agent.run(nc))
    finally:
        await client.close()
        await bus.close(nc)
