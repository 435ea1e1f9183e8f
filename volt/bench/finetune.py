"""``volt bench finetune``: what fine-tuning costs and how soon a tuned model serves.

Three figures, one run, on this machine's CPU (one torch thread, as in tests):

* **Training throughput**: the trainer (``volt/finetune/trainer.py``, LoRA on
  the tiny model) on a generated chat dataset of ``--examples`` conversations
  of varied length: tokens trained per second (every epoch counted, as
  metering counts them) and milliseconds per step.
* **Succeeded to served**: a whole Volt (``volt.testing.Cluster``: NATS, the
  scheduler, the API, one agent with the CPU engine) takes a file upload and a
  job through OpenAI's routes; the clock starts when the API first shows the
  job ``succeeded`` and stops at the first answer of the tuned model (the
  agent fetches the sealed adapter from the blob store and loads it into the
  engine on that first request), then a second request for comparison.
* **N adapters on one engine**: the CPU engine serving the base model alone,
  then with 1, 8 and 32 adapters loaded, requests spread over them round-robin
  at a fixed concurrency: requests/s and p50 latency, straight to the engine's
  socket (Volt's relay is measured by ``volt bench overhead``).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from volt.agent.engine.client import EngineClient
from volt.agent.engine.tiny_model import MODEL_ID, ensure_built, training_corpus
from volt.bench.loadgen import percentile
from volt.bench.report import header, progress, write
from volt.processes import spawn, terminate


def dataset(examples: int, seed: int = 0) -> bytes:
    """Chat examples of varied length from the tiny model's own corpus."""
    rng = random.Random(seed)
    corpus = training_corpus(seed=seed + 1, lines=2000)
    lines = []
    for _ in range(examples):
        lines.append(json.dumps({"messages": [
            {"role": "user", "content": " ".join(rng.sample(corpus, rng.randint(1, 3)))},
            {"role": "assistant", "content": " ".join(rng.sample(corpus, rng.randint(1, 4)))},
        ]}))
    return ("\n".join(lines) + "\n").encode()


def train(model_dir: Path, folder: Path, *, examples: int, epochs: int,
          batch_size: int) -> dict[str, Any]:
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "train.jsonl"
    data.write_bytes(dataset(examples))
    out = subprocess.run(
        [sys.executable, "-m", "volt.finetune.trainer", "--base", str(model_dir),
         "--data", str(data), "--out", str(folder / "out"), "--epochs", str(epochs),
         "--batch-size", str(batch_size), "--threads", "1"],
        check=True, capture_output=True, text=True)
    events = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    done = next(e for e in events if e["event"] == "done")
    steps = [e for e in events if e["event"] == "step"]
    # Per-step time from the steps' own clock: loading the model is not training.
    elapsed = steps[-1]["elapsed_s"] - steps[0]["elapsed_s"]
    trained = steps[-1]["tokens"] - steps[0]["tokens"]
    return {"examples": examples, "epochs": epochs, "batch_size": batch_size,
            "steps": done["step"], "trained_tokens": done["trained_tokens"],
            "tokens_per_s": round(trained / elapsed, 1),
            "ms_per_step": round(1000 * elapsed / (len(steps) - 1), 2),
            "adapter": done["path"]}


async def _serve_load(engine: EngineClient, models: list[str], *, requests: int,
                      concurrency: int, max_tokens: int) -> dict[str, Any]:
    latencies: list[float] = []
    counter = iter(range(requests))

    async def client() -> None:
        for index in counter:
            body = json.dumps({"model": models[index % len(models)], "max_tokens": max_tokens,
                               "temperature": 0, "messages": [
                                   {"role": "user", "content": f"Tell me about {index}"}]})
            started = time.perf_counter()
            await engine.complete("/v1/chat/completions", body.encode())
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {"requests_per_s": round(requests / wall, 2),
            "p50_ms": round(1000 * statistics.median(latencies), 1),
            "p99_ms": round(1000 * percentile(latencies, 99), 1)}


async def adapters_on_one_engine(model_dir: Path, adapter: Path, folder: Path, *,
                                 counts: list[int], requests: int, concurrency: int,
                                 max_tokens: int) -> list[dict[str, Any]]:
    socket = folder / "engine.sock"
    process = await spawn([sys.executable, "-m", "volt.agent.engine.cpu_server",
                           "--socket", str(socket), "--model-dir", str(model_dir),
                           "--threads", "1"], stdout=subprocess.DEVNULL)
    engine = EngineClient(socket)
    rows = []
    try:
        deadline = time.monotonic() + 120
        while not (socket.exists() and await engine.healthy()):
            if time.monotonic() > deadline:
                raise RuntimeError("the CPU engine did not start")
            await asyncio.sleep(0.2)
        base = await _serve_load(engine, [MODEL_ID], requests=requests,
                                 concurrency=concurrency, max_tokens=max_tokens)
        rows.append({"adapters": 0, **base})
        progress(f"base model: {base['requests_per_s']} req/s")
        loaded: list[str] = []
        for count in counts:
            while len(loaded) < count:
                name = f"ft:{MODEL_ID}:bench:{len(loaded)}:ftjob-{len(loaded):024x}"
                await engine.load_adapter(name, adapter)
                loaded.append(name)
            row = await _serve_load(engine, loaded, requests=requests,
                                    concurrency=concurrency, max_tokens=max_tokens)
            rows.append({"adapters": count, **row})
            progress(f"{count} adapters: {row['requests_per_s']} req/s")
    finally:
        await engine.close()
        await terminate(process)
    return rows


def succeeded_to_served(model_dir: Path, folder: Path) -> dict[str, Any]:
    import openai

    from volt.testing import Cluster

    data = dataset(32)
    with Cluster(folder / "cluster", model_cache=model_dir.parent,
                 heartbeat_interval_s=0.5) as cluster:
        cluster.add_agent("bench-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                           max_retries=0) as sdk:
            uploaded = sdk.files.create(file=("bench.jsonl", data), purpose="fine-tune")
            created = time.perf_counter()
            job = sdk.fine_tuning.jobs.create(model=MODEL_ID, training_file=uploaded.id,
                                              hyperparameters={"n_epochs": 1, "batch_size": 8})
            while job.status not in ("succeeded", "failed", "cancelled"):
                time.sleep(0.05)
                job = sdk.fine_tuning.jobs.retrieve(job.id)
            succeeded = time.perf_counter()
            if job.status != "succeeded" or job.fine_tuned_model is None:
                raise RuntimeError(f"the bench job ended {job.status}: {job.error}")
            answers = []
            for _ in range(2):
                while True:  # the view with the new model may be a moment behind
                    try:
                        started = time.perf_counter()
                        sdk.chat.completions.create(
                            model=job.fine_tuned_model, max_tokens=8,
                            messages=[{"role": "user", "content": "hello"}])
                        break
                    except openai.NotFoundError:
                        time.sleep(0.02)
                answers.append(time.perf_counter() - started)
                if len(answers) == 1:
                    first_served = time.perf_counter()
    return {"created_to_succeeded_s": round(succeeded - created, 2),
            "succeeded_to_first_served_ms": round(1000 * (first_served - succeeded), 1),
            "first_request_ms": round(1000 * answers[0], 1),
            "second_request_ms": round(1000 * answers[1], 1)}


def run_finetune_bench(*, examples: int, epochs: int, batch_size: int, counts: list[int],
                       requests: int, concurrency: int, max_tokens: int,
                       json_path: Path | None) -> dict[str, Any]:
    report = header("finetune", {"examples": examples, "epochs": epochs,
                                 "batch_size": batch_size, "adapters": counts,
                                 "requests": requests, "concurrency": concurrency,
                                 "max_tokens": max_tokens, "torch_threads": 1})
    with tempfile.TemporaryDirectory(prefix="volt-bench-ft-") as tmp:
        folder = Path(tmp)
        model_dir = ensure_built(folder / "models" / MODEL_ID)
        progress("training ...")
        training = train(model_dir, folder / "train", examples=examples, epochs=epochs,
                         batch_size=batch_size)
        adapter = Path(training.pop("adapter"))
        keep = folder / "adapter"
        shutil.copytree(adapter, keep)
        progress(f"training: {training['tokens_per_s']} tokens/s")
        serving = asyncio.run(adapters_on_one_engine(
            model_dir, keep, folder, counts=counts, requests=requests,
            concurrency=concurrency, max_tokens=max_tokens))
        progress("a job through a whole Volt ...")
        served = succeeded_to_served(model_dir, folder)
    report.update(training=training, serving=serving, succeeded_to_served=served)
    print(f"training: {training['tokens_per_s']} tokens/s, {training['ms_per_step']} ms/step "
          f"(batch {batch_size}, {training['trained_tokens']} tokens in {training['steps']} "
          "steps)")
    print(f"succeeded -> first served request: {served['succeeded_to_first_served_ms']} ms "
          f"(first request {served['first_request_ms']} ms, second "
          f"{served['second_request_ms']} ms)")
    print(f"{'ADAPTERS':>8} {'REQ/S':>8} {'P50 MS':>8} {'P99 MS':>8}")
    for row in serving:
        label = "base" if row["adapters"] == 0 else str(row["adapters"])
        print(f"{label:>8} {row['requests_per_s']:>8} {row['p50_ms']:>8} {row['p99_ms']:>8}")
    write(report, json_path)
    return report
