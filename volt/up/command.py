"""``volt up``: a whole Volt on one machine.

Starts, as child processes: an embedded ``nats-server`` (JetStream on, data in
the data folder), the scheduler (SQLite store in the data folder), one agent
with the CPU engine (building the tiny model on first run) and the API on
127.0.0.1. Prints the base URL, the development API key and examples once a
real chat completion has gone through. Ctrl-C (or SIGTERM) stops every child,
API first, NATS last. Only one ``volt up`` may use a data folder at a time.

Children write JSON logs to ``<data>/logs/<service>.log``; the terminal shows
only progress and the banner.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from volt.agent.engine.tiny_model import MODEL_ID, ensure_built, is_built
from volt.agent.seal import SealUnavailable, check_available
from volt.config import VoltConfig
from volt.http1 import Http1Client, HttpError
from volt.identity.bus_authority import BusAuthority
from volt.processes import python_command, spawn, terminate
from volt.store import Database
from volt.up.bootstrap import ensure_dev_key
from volt.up.nats_server import NatsServer, free_port
from volt.up.software_tpm import (
    DEVELOPMENT_BOOT,
    Swtpm,
    development_policy,
    manufacturer_cas,
    unavailable,
)

READY_TIMEOUT_S = 300.0


class AlreadyRunning(Exception):
    pass


class StartFailed(Exception):
    pass


@contextlib.contextmanager
def data_dir_lock(data: Path) -> Iterator[Path]:
    """Hold ``<data>/volt-up.lock`` for the life of this ``volt up``."""
    data.mkdir(parents=True, exist_ok=True)
    lock_path = data / "volt-up.lock"
    state_path = data / "volt-up.json"
    handle = open(lock_path, "a+")  # noqa: SIM115
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        details = ""
        with contextlib.suppress(OSError, ValueError):
            state = json.loads(state_path.read_text())
            details = f" (pid {state['pid']}, {state['base_url']})"
        raise AlreadyRunning(
            f"Volt is already running on the data folder {data}{details}. Stop it with Ctrl-C "
            "in its terminal, or start another with --data-dir pointing elsewhere."
        ) from None
    try:
        yield state_path
    finally:
        with contextlib.suppress(OSError):
            state_path.unlink()
        handle.close()


def _probes(config: VoltConfig) -> list[tuple[str, bytes]]:
    """One real request per model: (path, body)."""
    probes = [("/v1/chat/completions", json.dumps({
        "model": config.agent.model, "messages": [{"role": "user", "content": "ping"}],
        "max_tokens": 1,
    }).encode())]
    if config.agent.embedding_model:
        probes.append(("/v1/embeddings", json.dumps({
            "model": config.agent.embedding_model, "input": "ping",
        }).encode()))
    return probes


async def _wait_ready(port: int, key: str, children: dict[str, asyncio.subprocess.Process],
                      probes: list[tuple[str, bytes]], out: TextIO) -> None:
    """Ready means a real request to every model went through end to end."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    http = Http1Client(port=port, headers={"Authorization": f"Bearer {key}"})
    last_note = 0.0
    waiting = list(probes)
    try:
        while time.monotonic() < deadline:
            for name, child in children.items():
                if child.returncode is not None:
                    raise StartFailed(f"the {name} exited with status {child.returncode}")
            path, body = waiting[0]
            with contextlib.suppress(HttpError, TimeoutError):
                async with asyncio.timeout(10):
                    async with await http.request("POST", path, body) as resp:
                        await resp.read()
                        if resp.status == 200:
                            waiting.pop(0)
                            if not waiting:
                                return
                            continue
            if time.monotonic() - last_note > 5:
                out.write("  waiting for the engines to come up…\n")
                out.flush()
                last_note = time.monotonic()
            await asyncio.sleep(0.2)
    finally:
        http.close()
    raise StartFailed(f"Volt was not ready within {READY_TIMEOUT_S:.0f}s")


def _banner(base_url: str, key: str, data: Path, embedding_model: str,
            unsealed: str | None, no_tpm: str | None) -> str:
    models = f"{MODEL_ID}, {embedding_model} (embeddings)" if embedding_model else MODEL_ID
    seal = ("sealed (each in a network namespace of its own: no egress)" if unsealed is None
            else f"NOT SEALED — {unsealed}; development only (responses say \"insecure\")")
    attestation = ("attested by a software TPM (swtpm, a fixed development boot: it proves "
                   "nothing about this machine)" if no_tpm is None
                   else f"not_attested ({no_tpm}; responses say so)")
    return f"""
Volt is up.

  Base URL     {base_url}
  API key      {key}
  Models       {models}
  Engines      {seal}
  Attestation  {attestation}
  Bus          mutual TLS, one least-privilege identity per process ({data / 'bus'})
  Data folder  {data}   (logs in {data / 'logs'})

Try it with curl:

  curl {base_url}/chat/completions \\
    -H "Authorization: Bearer {key}" \\
    -H "Content-Type: application/json" \\
    -d '{{"model": "{MODEL_ID}", "messages": [{{"role": "user", "content": "Hello"}}]}}'

Or with the openai Python client:

  from openai import OpenAI
  client = OpenAI(base_url="{base_url}", api_key="{key}")
  reply = client.chat.completions.create(
      model="{MODEL_ID}", messages=[{{"role": "user", "content": "Hello"}}])
  print(reply.choices[0].message.content, reply.volt)

Press Ctrl-C to stop.
"""


async def run_up(config: VoltConfig, *, config_path: Path | None = None,
                 out: TextIO = sys.stdout, software_tpm: bool = True) -> None:
    """``software_tpm``: give the node swtpm where it is installed, so it attests."""
    data = config.data_path
    with data_dir_lock(data) as state_path:
        logs = data / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        if config.agent.model == MODEL_ID and not is_built(config.model_dir()):
            out.write(f"Building the tiny model {MODEL_ID} (first run only)…\n")
            out.flush()
            await asyncio.to_thread(ensure_built, config.model_dir())
        out.write("Preparing the store…\n")
        out.flush()
        db = Database(config.store_url())
        try:
            await db.upgrade()
            key = await ensure_dev_key(config, db, data / "dev-api-key")
        finally:
            await db.close()

        # The node attests as in production where swtpm is installed: a software
        # TPM, a fixed development "boot" and a policy approving exactly it.
        no_tpm = "volt up --no-tpm" if not software_tpm else unavailable()
        tpm = None if no_tpm else Swtpm(data / "tpm")
        attestation_env = {"VOLT_ATTESTATION_REQUIRED": "0"}
        if tpm is not None:
            out.write("Starting a software TPM (swtpm) for the node…\n")
            out.flush()
            await asyncio.to_thread(tpm.start)
            await asyncio.to_thread(tpm.boot, DEVELOPMENT_BOOT)
            folder = data / "attestation"
            folder.mkdir(exist_ok=True)
            (folder / "policy.json").write_bytes(development_policy())
            (folder / "ek-cas.pem").write_bytes(await asyncio.to_thread(manufacturer_cas))
            attestation_env = {
                "VOLT_ATTESTATION_REQUIRED": "1",
                "VOLT_ATTESTATION_POLICY_FILE": str(folder / "policy.json"),
                "VOLT_ATTESTATION_EK_CA_FILE": str(folder / "ek-cas.pem"),
                "VOLT_AGENT_TPM": tpm.tcti,
                "VOLT_AGENT_EVENT_LOG": str(tpm.log_path),
            }
        # The bus is secured as in production: each process its own X.509-SVID
        # and only its role's permissions (volt/wire/permissions.py). With a TPM
        # the node starts with an enrolment identity and earns its own.
        authority = BusAuthority(data / "bus", config.secrets_path(),
                                 config.identity.trust_domain)
        issue_node = authority.node if tpm is None else authority.enrolling_node
        # api.workers API replicas on the one port, each a bus identity of its own.
        apis = ["api", *(f"api-{n}" for n in range(2, config.api.workers + 1))]
        services = ["scheduler", "agent", *apis]
        svid_dirs = {
            "scheduler": authority.scheduler(),
            "agent": issue_node(config.agent.metro, config.node_id()),
            **{name: authority.api(name) for name in apis},
        }
        nats = NatsServer(
            port=config.nats.port, store_dir=data / "nats", log_file=logs / "nats.log",
            authority=authority,
        )
        api_port = config.api.port or free_port(config.api.host)
        base_url = f"http://{config.api.host}:{api_port}/v1"
        # Engines run sealed where this machine can (root, network namespaces);
        # elsewhere volt up runs them unsealed, visibly, as a development setup.
        unsealed: str | None = None
        try:
            await asyncio.to_thread(check_available)
        except SealUnavailable as exc:
            unsealed = str(exc)
        env = {
            **os.environ,
            # Without a TPM the node runs visibly not_attested, which production's
            # attestation.required refuses.
            **attestation_env,
            "VOLT_AGENT_INSECURE_UNSEALED": "1" if unsealed else "0",
            "VOLT_SCHEDULER_ALLOW_UNSEALED": "1" if unsealed else "0",
            "VOLT_DATA_DIR": str(data),
            "VOLT_NATS_URL": "",  # set below, once the server has its port
            "VOLT_STORE_URL": config.store_url(),
            "VOLT_API_HOST": config.api.host,
            "VOLT_API_PORT": str(api_port),
            "VOLT_AGENT_EMBEDDING_MODEL": config.agent.embedding_model,
            "PYTHONUNBUFFERED": "1",
        }
        if config_path is not None:
            env["VOLT_CONFIG"] = str(config_path)
        children: dict[str, asyncio.subprocess.Process] = {}
        log_handles = []
        try:
            out.write("Starting NATS, the scheduler, the agent and the API…\n")
            out.flush()
            await asyncio.to_thread(nats.start)
            env["VOLT_NATS_URL"] = nats.url
            for name in services:
                handle = open(logs / f"{name}.log", "ab")  # noqa: SIM115, ASYNC230 - a local log file
                log_handles.append(handle)
                children[name] = await spawn(
                    python_command("volt", "api" if name in apis else name),
                    stdout=handle, stderr=handle,
                    env={**env, "VOLT_NATS_SVID_DIR": str(svid_dirs[name])},
                )
            await _wait_ready(api_port, key, children, _probes(config), out)
            state_path.write_text(json.dumps({"pid": os.getpid(), "base_url": base_url}))
            out.write(_banner(base_url, key, data, config.agent.embedding_model, unsealed,
                              no_tpm))
            out.flush()
            waits = {asyncio.ensure_future(child.wait()): name for name, child in children.items()}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            crashed = waits[done.pop()]
            raise StartFailed(
                f"the {crashed} stopped unexpectedly (see {logs / (crashed + '.log')}); "
                "stopping Volt"
            )
        finally:
            for name in reversed(services):
                if name in children:
                    await terminate(children[name])
            await asyncio.to_thread(nats.stop)
            if tpm is not None:
                await asyncio.to_thread(tpm.stop)
            for handle in log_handles:
                handle.close()
