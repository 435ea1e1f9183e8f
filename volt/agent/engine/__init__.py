"""The inference engine behind an agent, reached over OpenAI HTTP on a Unix socket."""

from __future__ import annotations

from volt.config import VoltConfig
from volt.processes import python_command


def cpu_engine_command(config: VoltConfig) -> list[str]:
    """The command that starts Volt's CPU engine for this agent."""
    return python_command(
        "volt.agent.engine.cpu_server",
        "--socket", str(config.engine_socket()),
        "--model-dir", str(config.model_dir()),
        "--model-id", config.agent.model,
        "--mode", config.agent.engine_mode,
        "--threads", str(config.agent.engine_threads),
    )
