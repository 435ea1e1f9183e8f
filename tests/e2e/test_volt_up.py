"""``volt up`` as a user runs it: one command, a working API, a clean Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import psutil
import pytest
from support.readme import NOT_RUN, Example, Reader, examples
from support.requirements import require

from volt.agent.engine.tiny_model import MODEL_ID
from volt.testing import free_port
from volt.up.software_tpm import unavailable

pytestmark = pytest.mark.slow


def volt(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "volt", *args], stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
        env={k: v for k, v in (env or os.environ).items() if k != "VOLT_CONFIG"},
    )


class Output:
    """Collects a child's stdout on a thread (select() would miss buffered lines)."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.text = ""
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: [self.lines.put(line) for line in stream],
                         daemon=True).start()

    def until(self, pattern: str, timeout_s: float) -> str:
        deadline = time.monotonic() + timeout_s
        while not re.search(pattern, self.text):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"never saw {pattern!r}; output so far:\n{self.text}")
            with contextlib.suppress(queue.Empty):
                self.text += self.lines.get(timeout=min(remaining, 0.5))
        return self.text


def test_volt_up_serves_then_stops_cleanly(tmp_path: Path, tiny_model: Path) -> None:
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / MODEL_ID).symlink_to(tiny_model)
    port = free_port()
    up = volt("up", "--data-dir", str(data), "--api-port", str(port))
    try:
        output = Output(up)
        banner = output.until(r"Press Ctrl-C to stop", timeout_s=180)
        base_url = re.search(r"Base URL\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        key = re.search(r"API key\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        assert base_url == f"http://127.0.0.1:{port}/v1"
        assert key.startswith("volt_sk_live_")
        assert "curl " in banner
        assert "from openai import OpenAI" in banner
        # The dev key is kept only in a private file.
        assert (data / "dev-api-key").stat().st_mode & 0o077 == 0

        with openai.OpenAI(base_url=base_url, api_key=key) as sdk:
            reply = sdk.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "hello"}], max_tokens=4
            )
            assert reply.model_extra["volt"]["pod"]  # type: ignore[index]
            # With swtpm installed (CI has it), the node attests: a software TPM,
            # enrolment, its bus SVID earned by attestation, a passing verdict.
            if unavailable() is None:
                assert "Attestation  attested by a software TPM" in banner
                assert reply.model_extra["volt"]["attestation"] == "attested"  # type: ignore[index]
                assert [(folder / "node" / "svid.pem").exists()
                        for folder in (data / "bus").glob("enrol-*")] == [True]
            else:
                require(f"volt up's software TPM: {unavailable()}")
            # The embedding model is served beside the chat model.
            assert "all-minilm-l6-v2" in banner
            vectors = sdk.embeddings.create(model="all-minilm-l6-v2", input=["a", "b"])
            assert [len(item.embedding) for item in vectors.data] == [384, 384]

        run_readme_examples(Reader(base_url.removesuffix("/v1"), key, data, tmp_path))

        # A second volt up on the same data folder refuses, clearly.
        second = volt("up", "--data-dir", str(data), "--api-port", str(free_port()))
        refusal, _ = second.communicate(timeout=60)
        assert second.returncode != 0
        assert "already running" in refusal
        assert base_url in refusal

        children = psutil.Process(up.pid).children(recursive=True)
        names = " ".join(" ".join(c.cmdline()) for c in children)
        for expected in ("nats-server", "volt scheduler", "volt agent", "volt api",
                         "cpu_server", "embedding_server"):
            assert expected in names, names

        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
        assert "Volt stopped." in output.until("Volt stopped", timeout_s=10)
        _gone, alive = psutil.wait_procs(children, timeout=10)
        assert alive == [], [c.pid for c in alive]
    finally:
        if up.poll() is None:
            up.kill()


def run_readme_examples(reader: Reader) -> None:
    """Every example the README shows, as a reader would run it (``support/readme.py``)."""
    blocks = examples()
    openai_example = next(e for e in blocks if e.first_line == "from openai import OpenAI")
    # What the embeddings example continues from: the client the one before it made.
    client_setup = openai_example.code[:openai_example.code.index("reply =")]
    ran: list[Example] = []
    for example in blocks:
        if any(example.first_line.startswith(first) for first in NOT_RUN):
            continue
        if example.first_line.startswith("curl "):
            [reply] = reader.shell(example)
            assert json.loads(reply)["choices"][0]["message"]["content"] is not None
        elif example.first_line.startswith("volt admin orgs create"):
            outputs = reader.shell(example)
            assert outputs[0].startswith("org_"), outputs   # the org's id
            assert "deploy-bot" in outputs[3]                # volt keys list
            assert "Revoked" in outputs[4]
            assert "MODEL" in outputs[5].upper()             # volt usage, by model and day
        elif example is openai_example:
            output = reader.python(example)
            assert "'pod':" in output, output
            assert "'timing':" in output, output
        elif example.first_line.startswith("vectors = client.embeddings"):
            assert reader.python(example, prelude=client_setup).strip() == "384"
        elif example.first_line == "import json, time":  # fine-tuning, for real
            lines = reader.python(example).strip().splitlines()
            assert lines[0].startswith("succeeded ft:volt-tiny:"), lines
            assert lines[-1] == "Heliotrope.", lines
        elif example.first_line == "from volt.sdk import Client":
            output = reader.python(example)
            assert output.startswith("spiffe://"), output
            assert "/v1/orgs/{org_id}/api-keys" in output, output
        else:
            raise AssertionError(f"README line {example.line}: an example no test runs "
                                 f"({example.first_line!r}); run it here or say in NOT_RUN why not")
        ran.append(example)
    assert len(ran) == 6, [e.first_line for e in ran]


def test_a_bad_setting_stops_volt_up_naming_the_field(tmp_path: Path) -> None:
    env = {**os.environ, "VOLT_API_PORT": "not-a-port", "VOLT_DATA_DIR": str(tmp_path)}
    process = volt("up", env=env)
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "api.port" in output
    assert "Traceback" not in output


def test_a_bad_config_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "volt.toml"
    config.write_text("[agent]\nheartbeat_interval_s = -1\n")
    process = volt("up", "--config", str(config), "--data-dir", str(tmp_path))
    output, _ = process.communicate(timeout=60)
    assert process.returncode != 0
    assert "agent.heartbeat_interval_s" in output
    assert "Traceback" not in output


def test_volt_up_without_embeddings_on_any_free_port(tmp_path: Path, tiny_model: Path) -> None:
    """The options the README offers: --no-embeddings, --no-tpm and --api-port 0, and
    the rest of ``volt up --help``: --nats-port and --api-workers (--config and
    --data-dir: above)."""
    data = tmp_path / "data"
    (data / "models").mkdir(parents=True)
    (data / "models" / MODEL_ID).symlink_to(tiny_model)
    nats_port = free_port()
    up = volt("up", "--data-dir", str(data), "--api-port", "0", "--no-embeddings", "--no-tpm",
              "--nats-port", str(nats_port), "--api-workers", "2")
    try:
        banner = Output(up).until(r"Press Ctrl-C to stop", timeout_s=180)
        with socket.create_connection(("127.0.0.1", nats_port), timeout=5) as bus:
            assert bus.recv(4) == b"INFO"  # nats-server greets every client on that port
        base_url = re.search(r"Base URL\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        key = re.search(r"API key\s+(\S+)", banner).group(1)  # type: ignore[union-attr]
        assert re.search(r"Models\s+volt-tiny\s*$", banner, re.MULTILINE), banner
        assert "Attestation  not_attested (volt up --no-tpm" in banner
        # Two API processes on the one port: the kernel spreads connections over both.
        apis = [c for c in psutil.Process(up.pid).children(recursive=True)
                if c.cmdline()[-2:] == ["volt", "api"]]
        assert len(apis) == 2, [c.cmdline() for c in apis]
        port = int(base_url.rsplit(":", 1)[1].split("/")[0])
        clients = [httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"})
                   for _ in range(16)]
        try:
            assert {c.get("/models").status_code for c in clients} == {200}
            held = [sum(1 for conn in api.net_connections("tcp")
                        if conn.laddr.port == port and conn.status == psutil.CONN_ESTABLISHED)
                    for api in apis]
            assert sum(held) == 16, held
            assert min(held) > 0, held
        finally:
            for client in clients:
                client.close()
        with openai.OpenAI(base_url=base_url, api_key=key) as sdk:
            assert [m.id for m in sdk.models.list()] == [MODEL_ID]
            reply = sdk.chat.completions.create(
                model=MODEL_ID, messages=[{"role": "user", "content": "hello"}], max_tokens=1)
            assert reply.model_extra["volt"]["attestation"] == "not_attested"  # type: ignore[index]
            with pytest.raises(openai.NotFoundError):
                sdk.embeddings.create(model="all-minilm-l6-v2", input="a")
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0
    finally:
        if up.poll() is None:
            up.kill()
