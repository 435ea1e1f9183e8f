"""The inference engines behind an agent, reached over OpenAI HTTP on Unix sockets."""

from __future__ import annotations

import sys

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
        "--ttft-ms", str(config.agent.paced_ttft_ms),
        "--itl-ms", str(config.agent.paced_itl_ms),
        "--schedule", config.agent.paced_schedule,
    )


def vllm_engine_command(config: VoltConfig) -> list[str]:
    """``vllm serve`` for this agent's model, on its Unix socket, from vLLM's own
    virtual environment (``agent.vllm_python``)."""
    python = config.agent.vllm_python or sys.executable
    model_dir = config.model_dir()
    return [
        python, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model_dir) if model_dir.exists() else config.agent.model,
        "--served-model-name", config.agent.model,
        "--uds", str(config.engine_socket()),
        "--disable-uvicorn-access-log",
        # Cached prompt tokens in usage, so metering records them.
        "--enable-prompt-tokens-details",
        # Tuned models: LoRA adapters loaded and unloaded at run time
        # (VLLM_ALLOW_RUNTIME_LORA_UPDATING), as the CPU engine does.
        *(["--enable-lora", "--max-loras", str(config.agent.vllm_max_loras),
           "--max-lora-rank", str(config.agent.vllm_max_lora_rank),
           "--max-cpu-loras", str(max(config.agent.max_adapters,
                                      config.agent.vllm_max_loras))]
          if config.agent.vllm_max_loras else []),
        *config.agent.vllm_args,
    ]


VLLM_ENV = {
    # Zero egress: no model downloads, no usage reports, no telemetry.
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    # The agent loads tuned models' adapters through /v1/load_lora_adapter.
    "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True",
}


def embedding_engine_command(config: VoltConfig) -> list[str]:
    """The command that starts the embedding engine (``agent.embedding_model``)."""
    return python_command(
        "volt.agent.engine.embedding_server",
        "--socket", str(config.embedding_socket()),
        "--model-id", config.agent.embedding_model,
        "--threads", str(config.agent.engine_threads),
    )
