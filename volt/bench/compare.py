"""``volt bench compare``: one sweep, in one run, against three paths to one engine.

(a) the engine directly, (b) Volt (API → NATS → agent → engine, with
everything on: admission and fair queueing, prefix and session affinity,
catalogs, metering through JetStream), (c) LiteLLM's proxy in front of the
same engine. The engine is Volt's CPU engine in ``instant`` mode (fixed
tokens, no model) so the gateways, not a model, are what is measured; on
2 cores a real model would saturate long before either gateway.

The engine the agent supervises listens on a Unix socket, which LiteLLM
cannot dial; so a twin engine (same code, same mode, same model files) runs
on a loopback port for (a) and (c). LiteLLM (``pip install 'volt[bench]'``)
runs as users run it: ``litellm --config`` with one worker and the model
declared as a ``hosted_vllm`` deployment.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from volt.bench.loadgen import Target
from volt.bench.serve import Point, Sweep, report, run_sweep, write_outputs
from volt.processes import python_command
from volt.up.nats_server import free_port


def _wait_http(url: str, what: str, process: subprocess.Popen[bytes], log: Path,
               timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready within {timeout_s:.0f}s:\n{log.read_text()[-3000:]}")


def _litellm_config(path: Path, model: str, engine_port: int, master_key: str) -> None:
    # A master key, as LiteLLM insists on one: every request is authenticated,
    # as it is on Volt. No database: no spend tracking (Volt meters every request).
    path.write_text(f"""general_settings:
  master_key: {master_key}
model_list:
  - model_name: {model}
    litellm_params:
      model: hosted_vllm/{model}
      api_base: http://127.0.0.1:{engine_port}/v1
      api_key: none
""")


def _litellm_command() -> list[str]:
    found = shutil.which("litellm") or str(Path(sys.executable).with_name("litellm"))
    if not Path(found).exists():
        raise RuntimeError("LiteLLM is not installed: pip install 'litellm[proxy]' "
                           "(or ./dev bench, which installs Volt's bench extras)")
    return [found]


def run_compare(sweep: Sweep, *, json_path: Path | None, plot_path: Path | None,
                with_litellm: bool = True) -> list[Point]:
    import uvloop

    from volt.testing import Cluster

    children: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="volt-compare-") as tmp, \
            Cluster(Path(tmp), heartbeat_interval_s=1.0, engine_mode="instant") as cluster:
        logs = Path(tmp) / "bench-logs"
        logs.mkdir()
        try:
            print("starting Volt (instant engine)…", file=sys.stderr, flush=True)
            cluster.add_agent("bench-1", metro="bench")
            cluster.start_api()
            cluster.wait_routable()

            engine_port = free_port()
            engine_log = logs / "engine.log"
            with open(engine_log, "wb") as out:
                engine = subprocess.Popen(python_command(
                    "volt.agent.engine.cpu_server", "--port", str(engine_port),
                    "--model-dir", str(cluster.data_dir / "models" / sweep.model),
                    "--model-id", sweep.model, "--mode", "instant",
                ), stdout=out, stderr=subprocess.STDOUT)
            children.append(engine)
            _wait_http(f"http://127.0.0.1:{engine_port}/health", "engine", engine, engine_log)
            targets = [
                Target("engine", f"http://127.0.0.1:{engine_port}/v1"),
                Target("volt", cluster.base_url, api_key=cluster.api_key),
            ]
            if with_litellm:
                print("starting LiteLLM's proxy…", file=sys.stderr, flush=True)
                config = Path(tmp) / "litellm.yaml"
                master_key = "sk-bench-" + secrets.token_hex(16)
                _litellm_config(config, sweep.model, engine_port, master_key)
                port = free_port()
                litellm_log = logs / "litellm.log"
                with open(litellm_log, "wb") as out:
                    litellm = subprocess.Popen(
                        [*_litellm_command(), "--config", str(config), "--port", str(port),
                         "--host", "127.0.0.1", "--num_workers", "1"],
                        stdout=out, stderr=subprocess.STDOUT,
                        # Its model cost map from disk: this machine has no internet.
                        env={**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True"},
                    )
                children.append(litellm)
                _wait_http(f"http://127.0.0.1:{port}/health/liveliness", "LiteLLM", litellm,
                           litellm_log)
                targets.append(Target("litellm", f"http://127.0.0.1:{port}/v1",
                                      api_key=master_key))
            points = uvloop.run(run_sweep(targets, sweep, {
                "engine": _tree(engine.pid),
                # The whole Volt path but its engine: API, NATS server, agent,
                # and the scheduler (it stores every request's usage record).
                "volt": [*_tree(cluster.services["api"].pid),
                         *_tree(cluster.services["scheduler"].pid),
                         *_tree(cluster.services["bench-1"].pid, without="cpu_server"),
                         *([] if cluster.nats.pid is None else _tree(cluster.nats.pid))],
                "litellm": _tree(litellm.pid) if with_litellm else [],
            }))
        finally:
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(15)
                except subprocess.TimeoutExpired:
                    child.kill()
    extra: dict[str, Any] = {"compare": {
        "engine": "volt cpu engine, instant mode",
        "targets": [t.name for t in targets],
        "litellm_version": _litellm_version() if with_litellm else None,
        "ratios": ratios(points),
    }}
    write_outputs(points, report(points, sweep, extra), json_path, plot_path,
                  f"engine vs Volt vs LiteLLM ({sweep.endpoint}, {sweep.output} output tokens)")
    print(render_ratios(extra["compare"]["ratios"]))
    return points


def _tree(pid: int, without: str = "") -> list[Any]:
    """A process and its descendants (less those whose command line has ``without``)."""
    import psutil

    root = psutil.Process(pid)
    every = [root, *root.children(recursive=True)]
    # Case-blind: vLLM renames its processes "VLLM::EngineCore", "VLLM::Worker".
    return [p for p in every
            if not without or without.lower() not in " ".join(p.cmdline()).lower()]


def run_vllm_compare(sweep: Sweep, *, vllm_python: Path, vllm_args: str,
                     json_path: Path | None, plot_path: Path | None) -> list[Point]:
    """The engine (``vllm serve`` with the real model, over its Unix socket) vs
    Volt in front of it: what Volt adds when a model does the work.

    LiteLLM is left out here: it cannot dial the Unix socket vLLM serves on
    under the agent, and a second vLLM on a port would halve the CPU each gets.
    """
    import uvloop

    from volt.testing import Cluster

    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB, for the CPU build
    with tempfile.TemporaryDirectory(prefix="volt-compare-") as tmp, \
            Cluster(Path(tmp), heartbeat_interval_s=1.0) as cluster:
        print("starting Volt with vLLM (this takes a minute)…", file=sys.stderr, flush=True)
        cluster.add_agent("bench-1", metro="bench", engine="vllm",
                          vllm_python=str(vllm_python), vllm_args=vllm_args,
                          engine_startup_timeout_s="600")
        cluster.start_api()
        cluster.wait_routable(timeout_s=600)
        agent = cluster.services["bench-1"].pid
        engine_tree = [p for p in _tree(agent) if p.pid != agent]
        targets = [
            Target("vllm", "http://engine/v1", unix_socket=cluster.engine_socket("bench-1")),
            Target("volt", cluster.base_url, api_key=cluster.api_key),
        ]
        points = uvloop.run(run_sweep(targets, sweep, {
            "vllm": engine_tree,
            "volt": [*_tree(cluster.services["api"].pid),
                     *_tree(cluster.services["scheduler"].pid),
                     *_tree(agent, without="vllm"),
                     *([] if cluster.nats.pid is None else _tree(cluster.nats.pid))],
        }))
    extra: dict[str, Any] = {"compare": {"engine": f"vllm serve ({vllm_args})",
                                         "targets": ["vllm", "volt"]}}
    write_outputs(points, report(points, sweep, extra), json_path, plot_path,
                  f"vLLM vs Volt on vLLM ({sweep.model}, {sweep.endpoint})")
    return points


def _litellm_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("litellm")
    except Exception:
        return None


def ratios(points: list[Point]) -> list[dict[str, Any]]:
    """Per load point: Volt's throughput over LiteLLM's, and each gateway's added
    latency (its p50 end-to-end minus the engine's) with their ratio."""
    by = {(p.target, p.mode, p.load): p for p in points}
    out = []
    for (target, mode, load), volt in by.items():
        if target != "volt":
            continue
        engine, litellm = by.get(("engine", mode, load)), by.get(("litellm", mode, load))
        if engine is None or litellm is None:
            continue
        volt_added = volt.e2e_ms["p50"] - engine.e2e_ms["p50"]
        litellm_added = litellm.e2e_ms["p50"] - engine.e2e_ms["p50"]
        out.append({
            "mode": mode, "load": load,
            "throughput_ratio": round(volt.request_throughput
                                      / max(litellm.request_throughput, 1e-9), 2),
            "volt_added_p50_ms": round(volt_added, 3),
            "litellm_added_p50_ms": round(litellm_added, 3),
            "added_latency_ratio": round(volt_added / litellm_added, 4)
            if litellm_added > 0 else None,
            "failed": {"volt": volt.failed, "litellm": litellm.failed,
                       "engine": engine.failed},
        })
    return out


def render_ratios(rows: list[dict[str, Any]]) -> str:
    lines = ["", "| load | Volt / LiteLLM req/s | Volt added p50 ms | LiteLLM added p50 ms "
             "| added-latency ratio | failed (Volt/LiteLLM) |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        load = f"rate {r['load']:g}/s" if r["mode"] == "rate" else f"c={int(r['load'])}"
        ratio = "-" if r["added_latency_ratio"] is None else f"{r['added_latency_ratio']:.3f}"
        lines.append(f"| {load} | {r['throughput_ratio']:.1f}x | {r['volt_added_p50_ms']:.2f} | "
                     f"{r['litellm_added_p50_ms']:.2f} | {ratio} | "
                     f"{r['failed']['volt']}/{r['failed']['litellm']} |")
    return "\n".join(lines)
