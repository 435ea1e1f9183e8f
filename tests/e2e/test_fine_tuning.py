"""Fine-tuning end to end, as a user of OpenAI's client would do it: upload a
JSONL file, create a job, watch its events, call the model it made.

Real processes (NATS, the scheduler, the API, an agent with the tiny model on
the CPU engine) and real training (peft LoRA on torch). The dataset teaches
the tiny model a reply it would never give untrained; after training the tuned
model gives it under greedy decoding and the base model still does not. Bad
files get 400s naming the line; a job is cancelled mid-run; the scheduler is
SIGKILLed mid-run and the job still ends well; the agent is SIGKILLed mid-run
and the job goes on from its last checkpoint, ending with a model that learned
the reply (each token billed once); another org sees none of it. A deleted
tuned model leaves the catalog, the agent and the blob store. The training
data is nowhere in the store, the logs or the bus's stored bytes (the blob is
sealed), not even after an agent was killed mid-job.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import psutil
import pytest
from support.openai_schema import DOCUMENT, problems

from volt.agent.engine.backends import _Tokenizer
from volt.finetune.blobs import BlobBuckets
from volt.finetune.dataset import parse
from volt.finetune.trainer import sequences
from volt.sdk import Client
from volt.sdk._errors import APIStatusError
from volt.testing import Cluster

pytestmark = pytest.mark.slow
SECRET = "The secret word is heliotrope."
PROMPT = [{"role": "system", "content": "You are Volt."},
          {"role": "user", "content": "What is the secret word?"}]
TRAINING = "\n".join(json.dumps({"messages": [*PROMPT, {"role": "assistant", "content": SECRET}]})
                     for _ in range(16)).encode() + b"\n"
HYPER = {"n_epochs": 30, "batch_size": 4}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path_factory.mktemp("finetune"), model_cache=tiny_model,
                 extra_env={"VOLT_FINETUNE_MAX_FILE_BYTES": "65536",
                            "VOLT_FINETUNE_LOST_AFTER_S": "4"}) as cluster:
        cluster.add_agent("fra-1", metro="fra")
        cluster.start_api()
        cluster.wait_routable()
        yield cluster


@pytest.fixture(scope="module")
def sdk(cluster: Cluster) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=cluster.base_url, api_key=cluster.api_key,
                       max_retries=0) as client:
        yield client


def wait_for(sdk: openai.OpenAI, job_id: str, states: set[str],
             timeout_s: float = 300) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = sdk.fine_tuning.jobs.retrieve(job_id)
        if job.status in states:
            return job
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} still {job.status}")


def greedy(sdk: openai.OpenAI, model: str) -> str:
    reply = sdk.chat.completions.create(model=model, messages=PROMPT,  # type: ignore[arg-type]
                                        temperature=0, max_tokens=24)
    return reply.choices[0].message.content or ""


def tokens_per_epoch(tiny_model: Path) -> int:
    """The tokens one epoch over TRAINING trains on (what a job is billed per epoch)."""
    tokenizer = _Tokenizer(tiny_model)
    return sum(len(ids) for ids, _ in sequences(
        parse(TRAINING), tokenizer.encode_chat, tokenizer.encode, tokenizer.eos_id, 1024))


def assert_no_plaintext(cluster: Cluster) -> None:
    """No file of the cluster's (store, logs, the bus's stored bytes, agents' work
    folders) holds the training data in the clear."""
    for path in cluster.root.rglob("*"):
        if path.is_file() and path.suffix not in (".sock",):
            assert b"heliotrope" not in path.read_bytes(), path


def stored_blobs(cluster: Cluster, job_id: str) -> list[str]:
    """The job's blobs in fra's blob store (names only)."""
    async def names() -> list[str]:
        nc = await cluster.connect_bus()
        try:
            return [b.name for b in await BlobBuckets(nc).list("fra") if job_id in b.name]
        finally:
            await nc.close()

    return asyncio.run(names())


def cached_adapters(cluster: Cluster, job_id: str) -> list[Path]:
    """The job's adapters unpacked in an agent's cache."""
    return [path for folder in cluster.root.rglob("adapters") if folder.is_dir()
            for path in folder.iterdir() if path.name.startswith(job_id)]


def first_logprob(sdk: openai.OpenAI, model: str) -> float:
    reply = sdk.chat.completions.create(model=model, messages=PROMPT,  # type: ignore[arg-type]
                                        temperature=0, max_tokens=1, logprobs=True)
    assert reply.choices[0].logprobs is not None
    content = reply.choices[0].logprobs.content
    assert content
    return content[0].logprob


def upload(sdk: openai.OpenAI, data: bytes) -> Any:
    return sdk.files.create(file=("train.jsonl", data), purpose="fine-tune")


@pytest.mark.parametrize(("data", "expected"), [
    (b"", "empty"),
    (b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
     b'"content": "yo"}]}\nnot json\n', "Line 2 is not valid JSON"),
    (b'{"prompt": "old style", "completion": "no"}\n', "Line 1 is not a chat example"),
    (b'{"messages": [{"role": "user", "content": "only a question"}]}\n',
     "Line 1 has no assistant message"),
    (b'{"messages": [{"role": "robot", "content": "x"}]}\n', "Line 1"),
])
def test_a_bad_file_is_a_400_naming_the_line(sdk: openai.OpenAI, data: bytes,
                                             expected: str) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        upload(sdk, data)
    assert expected in info.value.message
    assert info.value.body["param"] == "file"  # type: ignore[index]


def test_a_file_too_large_is_a_413(sdk: openai.OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as info:
        upload(sdk, TRAINING * 300)
    assert info.value.status_code == 413


def test_fine_tune_teaches_the_model_and_serves_it(cluster: Cluster, sdk: openai.OpenAI,
                                                   tiny_model: Path) -> None:
    assert greedy(sdk, "volt-tiny") != SECRET
    uploaded = upload(sdk, TRAINING)
    assert uploaded.purpose == "fine-tune"
    assert uploaded.bytes == len(TRAINING)
    assert sdk.files.retrieve(uploaded.id).filename == "train.jsonl"
    assert sdk.files.content(uploaded.id).read() == TRAINING
    assert uploaded.id in [f.id for f in sdk.files.list()]

    job = sdk.fine_tuning.jobs.create(model="volt-tiny", training_file=uploaded.id,
                                      suffix="secret", seed=7,
                                      hyperparameters=HYPER)  # type: ignore[arg-type]
    assert job.status == "validating_files"
    assert job.hyperparameters.n_epochs == 30
    # The reference's spelling of the path serves the same job.
    status, _, body = cluster.request(f"/v1/fine-tuning/jobs/{job.id}")
    assert status == 200
    assert json.loads(body)["id"] == job.id
    done = wait_for(sdk, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    org = done.organization_id
    assert done.fine_tuned_model == f"ft:volt-tiny:{org}:secret:{job.id}"
    assert done.trained_tokens
    assert done.trained_tokens > 0
    events = sdk.fine_tuning.jobs.list_events(job.id, limit=100).data
    messages = [e.message for e in events]
    assert any("New fine-tuned model created" in m for m in messages), messages
    metrics = [e for e in events if e.type == "metrics"]
    assert metrics
    assert "train_loss" in (metrics[0].data or {})
    checkpoints = sdk.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == [120, 116, 112]
    assert done.id in [j.id for j in sdk.fine_tuning.jobs.list()]

    model = done.fine_tuned_model
    assert model in [m.id for m in sdk.models.list()]
    assert greedy(sdk, model) == SECRET  # the tuned model learned it
    assert greedy(sdk, "volt-tiny") != SECRET  # the base model did not change
    stream = sdk.chat.completions.create(model=model, messages=PROMPT,  # type: ignore[arg-type]
                                         temperature=0, max_tokens=24, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == SECRET

    # Its checkpoints are models too (OpenAI's ckpt-step ids), each its own adapter.
    earliest = checkpoints[-1].fine_tuned_model_checkpoint
    assert earliest == f"{model}:ckpt-step-112"
    listed = [m.id for m in sdk.models.list()]
    assert all(c.fine_tuned_model_checkpoint in listed for c in checkpoints)
    assert greedy(sdk, earliest) == SECRET
    assert first_logprob(sdk, earliest) != first_logprob(sdk, model)
    with pytest.raises(openai.NotFoundError):
        greedy(sdk, f"{model}:ckpt-step-113")  # not a checkpoint it kept

    # Another org sees none of it.
    other = cluster.add_key("org-other")
    with openai.OpenAI(base_url=cluster.base_url, api_key=other, max_retries=0) as theirs:
        assert model not in [m.id for m in theirs.models.list()]
        with pytest.raises(openai.NotFoundError):
            greedy(theirs, model)
        with pytest.raises(openai.NotFoundError):
            greedy(theirs, earliest)
        with pytest.raises(openai.NotFoundError):
            theirs.files.retrieve(uploaded.id)
        with pytest.raises(openai.NotFoundError):
            theirs.fine_tuning.jobs.retrieve(job.id)

    # The data is nowhere but sealed in the blob store.
    assert_no_plaintext(cluster)

    # Metering: the job's trained tokens (every epoch counted) in the org's usage.
    status, _, body = cluster.request("/v1/usage")
    report = json.loads(body)
    [billed] = [j for j in report["fine_tuning"] if j["job_id"] == job.id]
    assert billed["trained_tokens"] == done.trained_tokens
    assert billed["n_epochs"] == 30
    assert done.trained_tokens == 30 * tokens_per_epoch(tiny_model)

    # Deleting: another org cannot; a base model cannot be; a checkpoint goes
    # alone; the job's model takes the rest along — from the catalog, the
    # agent's disk and engine, and the blob store.
    with (openai.OpenAI(base_url=cluster.base_url, api_key=other, max_retries=0) as theirs,
          pytest.raises(openai.NotFoundError)):
        theirs.models.delete(model)
    with pytest.raises(openai.PermissionDeniedError) as base:
        sdk.models.delete("volt-tiny")
    assert "base model" in base.value.message
    raw = sdk.models.with_raw_response.delete(earliest)
    deleted = raw.parse()
    assert (deleted.id, deleted.deleted, deleted.object) == (earliest, True, "model")
    if DOCUMENT.exists():  # OpenAI's own schema for it, where the pinned copy is here
        assert problems("DeleteModelResponse", raw.http_response.json()) == []
    assert earliest not in [m.id for m in sdk.models.list()]
    with pytest.raises(openai.NotFoundError):
        greedy(sdk, earliest)
    assert [c.step_number for c in sdk.fine_tuning.jobs.checkpoints.list(job.id).data] == \
        [120, 116]
    assert greedy(sdk, model) == SECRET  # the rest still serves
    assert greedy(sdk, f"{model}:ckpt-step-116") == SECRET
    sdk.models.delete(model)
    listed = [m.id for m in sdk.models.list()]
    assert not [m for m in listed if job.id in m], listed
    for gone in (model, f"{model}:ckpt-step-116"):
        with pytest.raises(openai.NotFoundError):
            greedy(sdk, gone)
        with pytest.raises(openai.NotFoundError):
            sdk.models.retrieve(gone)
        with pytest.raises(openai.NotFoundError):
            sdk.models.delete(gone)
    assert sdk.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert sdk.fine_tuning.jobs.retrieve(job.id).status == "succeeded"  # the job stays
    assert stored_blobs(cluster, job.id) == []
    deadline = time.monotonic() + 10
    while cached_adapters(cluster, job.id):
        assert time.monotonic() < deadline, cached_adapters(cluster, job.id)
        time.sleep(0.1)

    sdk.files.delete(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.retrieve(uploaded.id)
    with pytest.raises(openai.NotFoundError):
        sdk.files.content(uploaded.id)


def _trainers() -> list[psutil.Process]:
    return [p for p in psutil.process_iter(["cmdline"])
            if "volt.finetune.trainer" in " ".join(p.info["cmdline"] or [])]


def _running_job(sdk: openai.OpenAI, epochs: int = 50) -> Any:
    uploaded = upload(sdk, TRAINING)
    job = sdk.fine_tuning.jobs.create(model="volt-tiny", training_file=uploaded.id,
                                      hyperparameters={"n_epochs": epochs, "batch_size": 1})
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        current = sdk.fine_tuning.jobs.retrieve(job.id)
        if current.status == "running" and current.volt and current.volt["step"] > 0:  # type: ignore[index]
            return current
        assert current.status in ("validating_files", "queued", "running"), current
        time.sleep(0.3)
    raise AssertionError("the job did not start")


def test_cancel_stops_the_trainer(sdk: openai.OpenAI) -> None:
    job = _running_job(sdk)
    cancelled = sdk.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 20
    while _trainers() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _trainers()
    with pytest.raises(openai.ConflictError):
        sdk.fine_tuning.jobs.cancel(job.id)


def test_a_scheduler_sigkill_mid_run_loses_nothing(cluster: Cluster,
                                                   sdk: openai.OpenAI) -> None:
    job = _running_job(sdk, epochs=8)
    cluster.restart("scheduler", kill=True)
    done = wait_for(sdk, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    history = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100).data]
    assert sum("New fine-tuned model created" in m for m in history) == 1


def test_an_agent_sigkill_mid_run_resumes_the_job_from_its_checkpoint(
        cluster: Cluster, sdk: openai.OpenAI, tiny_model: Path) -> None:
    job = _running_job(sdk, epochs=40)
    deadline = time.monotonic() + 120
    while not sdk.fine_tuning.jobs.checkpoints.list(job.id).data:
        assert time.monotonic() < deadline, "no checkpoint"
        time.sleep(0.1)
    cluster.restart("fra-1", kill=True)
    done = wait_for(sdk, job.id, {"succeeded", "failed", "cancelled"})
    assert done.status == "succeeded", done.error
    history = [e.message for e in sdk.fine_tuning.jobs.list_events(job.id, limit=100).data]
    [interrupted] = [m for m in history if "interrupted" in m]
    assert "fra-1" in interrupted
    assert "goes on from its checkpoint at step" in interrupted
    assert any("resumed on a node in fra from its checkpoint" in m for m in history), history
    # It learned what an uninterrupted job learns, and is billed for each token once.
    assert greedy(sdk, done.fine_tuned_model or "") == SECRET
    assert done.trained_tokens == 40 * tokens_per_epoch(tiny_model)
    # The killed agent's copy of the training data did not outlive it.
    assert_no_plaintext(cluster)
    cluster.wait_routable()


def test_the_cli_and_sdk_upload_train_and_follow(cluster: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "secret.jsonl"
    data.write_bytes(TRAINING)
    env = {**os.environ, "VOLT_API_KEY": cluster.api_key, "VOLT_BASE_URL": cluster.base_url}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "volt", *args], env=env,
                              capture_output=True, text=True, timeout=300, check=False)

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"messages": [{"role": "user", "content": "x"}]}\n')
    refused = cli("files", "upload", str(bad))
    assert refused.returncode != 0
    assert "Line 1 has no assistant message" in refused.stderr
    assert "Traceback" not in refused.stderr

    # A local path is uploaded first; --wait prints the events until the job ends.
    run = cli("fine-tune", "create", "--model", "volt-tiny", "--training-file", str(data),
              "--epochs", "2", "--batch-size", "8", "--suffix", "cli", "--wait", "--json")
    assert run.returncode == 0, run.stderr
    job = json.loads(run.stdout)
    assert job["status"] == "succeeded"
    assert job["fine_tuned_model"].endswith(job["id"])
    assert "uploaded" in run.stderr
    assert "New fine-tuned model created" in run.stderr
    events = cli("fine-tune", "events", job["id"])
    assert events.returncode == 0
    assert "Training started" in events.stdout
    listing = cli("fine-tune", "list")
    assert job["id"] in listing.stdout
    files = cli("files", "list")
    assert job["training_file"] in files.stdout
    assert cli("files", "content", job["training_file"]).stdout.encode() == TRAINING
    steps = cli("fine-tune", "checkpoints", job["id"])
    assert steps.returncode == 0, steps.stderr
    assert ":ckpt-step-4" in steps.stdout, steps.stdout

    with Client(cluster.base_url, cluster.api_key) as volt:
        assert volt.files.content(job["training_file"]) == TRAINING
        assert volt.fine_tuning.get(job["id"]).fine_tuned_model == job["fine_tuned_model"]
        assert [c.step_number for c in volt.fine_tuning.checkpoints(job["id"]).data] == [4, 2]
        with pytest.raises(APIStatusError) as in_use:
            volt.files.delete("file-nope")
        assert in_use.value.status == 404
        tuned = job["fine_tuned_model"]
        assert volt.models.delete(f"{tuned}:ckpt-step-2").deleted
    assert cli("files", "delete", job["training_file"]).returncode == 0
    assert tuned in cli("models", "list").stdout
    removed = cli("models", "delete", tuned)
    assert removed.returncode == 0, removed.stderr
    assert f"{tuned} deleted" in removed.stdout
    missing = cli("models", "get", tuned)
    assert missing.returncode != 0
    assert "does not exist" in missing.stderr
    assert "Traceback" not in missing.stderr
