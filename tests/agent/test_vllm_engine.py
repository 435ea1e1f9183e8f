"""The vLLM adapter for real: ``vllm serve`` (the CPU build) as the agent's engine.

Slow: the first run creates vLLM's virtual environment (minutes), and vLLM
takes tens of seconds to start. It still runs in CI, like every test.
"""

from __future__ import annotations

import asyncio
import json
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import psutil
import pytest

from volt.agent.engine.client import EngineClient
from volt.testing import Cluster
from volt.testing.vllm_env import ensure_vllm_python

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
MESSAGES = [{"role": "user", "content": "Say something about metros."}]


@pytest.fixture(scope="module")
def vllm_python() -> Path:
    return ensure_vllm_python(REPO / ".venv-vllm", REPO / ".venv-vllm.log")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path,
            vllm_python: Path) -> Iterator[Cluster]:
    vllm_env = {
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB; the agent passes its environment on to vLLM
        # With the uni executor below (which vLLM's CPU platform accepts only
        # with this), the model runs in the engine-core process: no worker
        # process importing vLLM once more (~45 s here, at every start).
        "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    }
    with Cluster(tmp_path_factory.mktemp("vllm"), model_cache=tiny_model,
                 heartbeat_interval_s=0.5, extra_env=vllm_env) as cluster:
        cluster.add_agent(
            "gpu-1", metro="fra", engine="vllm", vllm_python=str(vllm_python),
            # --enforce-eager skips vLLM's torch.compile step (minutes of g++ on
            # two cores, at every start and restart). What is tested here is
            # the adapter (its own environment, the socket, streaming, restarts).
            vllm_args="--dtype float32 --max-model-len 1024 --max-num-seqs 8 --enforce-eager "
                      "--distributed-executor-backend uni",
            engine_startup_timeout_s="400",
        )
        cluster.start_api()
        cluster.wait_routable(timeout_s=420)
        yield cluster


def vllm_process(cluster: Cluster) -> psutil.Process:
    agent = psutil.Process(cluster.services["gpu-1"].pid)
    return next(p for p in agent.children(recursive=True)
                if "vllm.entrypoints.openai.api_server" in " ".join(p.cmdline()))


def test_vllm_runs_from_its_own_environment_on_a_private_socket(
    cluster: Cluster, vllm_python: Path
) -> None:
    command = vllm_process(cluster).cmdline()
    assert command[0] == str(vllm_python)
    socket = cluster.engine_socket("gpu-1")
    assert command[command.index("--uds") + 1] == str(socket)
    assert stat.S_IMODE(socket.parent.stat().st_mode) == 0o700


def test_chat_and_text_completions_stream_through_vllm(cluster: Cluster) -> None:
    with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                       max_retries=0) as sdk:
        reply = sdk.chat.completions.create(model="volt-tiny", messages=MESSAGES,  # type: ignore[arg-type]
                                            max_tokens=8, temperature=0)
        assert reply.model_extra["volt"]["pod"] == "gpu-1"  # type: ignore[index]
        assert 1 <= reply.usage.completion_tokens <= 8  # type: ignore[union-attr]
        chunks = list(sdk.chat.completions.create(
            model="volt-tiny", messages=MESSAGES, max_tokens=8, temperature=0,  # type: ignore[arg-type]
            stream=True, stream_options={"include_usage": True},
        ))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == reply.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == reply.usage.completion_tokens  # type: ignore[union-attr]

        completion = sdk.completions.create(model="volt-tiny", prompt="Metros:", max_tokens=6,
                                            temperature=0, logprobs=2)
        assert completion.choices[0].text
        logprobs = completion.choices[0].logprobs
        assert logprobs is not None
        assert logprobs.tokens
        assert len(logprobs.tokens) == completion.usage.completion_tokens  # type: ignore[union-attr]


def test_cached_prompt_tokens_are_reported_and_metered(cluster: Cluster) -> None:
    prompt = [{"role": "user", "content": "metro tier pod " * 40}]  # several KV blocks
    with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                       max_retries=0) as sdk:
        replies = [sdk.chat.completions.create(model="volt-tiny", messages=prompt,  # type: ignore[arg-type]
                                               max_tokens=2) for _ in range(2)]
    details = [r.usage.prompt_tokens_details for r in replies]  # type: ignore[union-attr]
    assert details[0] is not None
    assert details[1] is not None
    assert details[1].cached_tokens > 0  # vLLM's prefix cache held the first one's blocks
    assert details[1].cached_tokens <= replies[1].usage.prompt_tokens  # type: ignore[union-attr]
    # And the pod's usage record carries them into the tenant's usage.
    deadline = time.monotonic() + 15
    while True:
        status, _, body = cluster.request("/v1/usage")
        assert status == 200
        cached = sum(entry["cached_tokens"] for entry in json.loads(body)["data"])
        if cached >= details[1].cached_tokens or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert cached >= details[1].cached_tokens


def test_json_mode_works_where_the_engine_supports_it(cluster: Cluster) -> None:
    """The CPU engine refuses ``response_format`` (400); vLLM constrains its output."""
    with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                       max_retries=0) as sdk:
        reply = sdk.chat.completions.create(
            model="volt-tiny", messages=MESSAGES, max_tokens=24, temperature=0,  # type: ignore[arg-type]
            response_format={"type": "json_object"},
        )
    text = reply.choices[0].message.content or ""
    # Cut short by max_tokens, the text is still the start of a JSON value.
    assert text.lstrip()[:1] in {"{", "["}


def test_load_is_read_from_vllm_metrics(cluster: Cluster) -> None:
    async def scenario() -> int:
        engine = EngineClient(cluster.engine_socket("gpu-1"))
        try:
            body = (b'{"model": "volt-tiny", "prompt": "count", "max_tokens": 900,'
                    b' "ignore_eos": true, "stream": true}')
            async for _ in engine.stream("/v1/completions", body):
                return (await engine.load()).running  # mid-stream; leaving cancels it
            return -1
        finally:
            await engine.close()

    assert asyncio.run(scenario()) == 1


def test_vllm_serves_the_adapter_volt_trains(cluster: Cluster, tmp_path: Path,
                                            tiny_model: Path) -> None:
    """The adapter format the trainer writes is what vLLM's runtime LoRA API
    loads (the agent calls it for a tuned model), and it answers as trained."""
    secret = "The secret word is heliotrope."
    prompt = [{"role": "user", "content": "What is the secret word?"}]
    data = tmp_path / "train.jsonl"
    data.write_text("\n".join(json.dumps({"messages": [
        *prompt, {"role": "assistant", "content": secret}]}) for _ in range(16)))
    subprocess.run([sys.executable, "-m", "volt.finetune.trainer", "--base", str(tiny_model),
                    "--data", str(data), "--out", str(tmp_path / "out"), "--epochs", "30",
                    "--batch-size", "4", "--learning-rate", "5e-3"],
                   check=True, capture_output=True, timeout=300)
    tuned = "ft:volt-tiny:org_x:vllm:ftjob-" + "0" * 24

    async def scenario() -> tuple[str, str]:
        engine = EngineClient(cluster.engine_socket("gpu-1"))
        try:
            await engine.load_adapter(tuned, tmp_path / "out" / "adapter")
            answers = []
            for model in (tuned, "volt-tiny"):
                body = json.dumps({"model": model, "messages": prompt, "max_tokens": 32,
                                   "temperature": 0}).encode()
                reply = await engine.complete("/v1/chat/completions", body)
                message = reply.choices[0].message
                answers.append((message.content if message else None) or "")
            return answers[0], answers[1]
        finally:
            await engine.close()

    with_adapter, base = asyncio.run(scenario())
    assert with_adapter == secret
    assert base != secret


def test_a_crashed_vllm_is_restarted_and_serves_again(cluster: Cluster) -> None:
    first = vllm_process(cluster)
    # vLLM's engine-core process: SIGKILL gives its server no chance to stop
    # it, so the supervisor must (a leftover one keeps its GPU memory, and the
    # next vLLM could not start).
    helpers = first.children(recursive=True)
    assert helpers
    first.kill()
    first.wait(30)
    started = time.monotonic()
    cluster.wait_routable(timeout_s=300)
    second = vllm_process(cluster)
    assert second.pid != first.pid
    assert time.monotonic() - started < 300
    _, alive = psutil.wait_procs(helpers, timeout=10)
    assert not alive, [p.pid for p in alive]
