"""The agent's fine-tuning side without a bus: what a killed agent left in its
work folder (a training file's plaintext among it) is gone before the next
one takes a job; a start for a job whose run here ended is a new run."""

from __future__ import annotations

import asyncio
from pathlib import Path

from volt.agent.training import Training
from volt.config import FinetuneSettings
from volt.wire import TrainStart


async def _publish(message: object) -> None:
    pass


def test_a_new_agent_deletes_what_a_killed_one_left(tmp_path: Path) -> None:
    work = tmp_path / "jobs"
    leftover = work / "ftjob-killed"
    (leftover / "out" / "checkpoints" / "step-4").mkdir(parents=True)
    (leftover / "train.jsonl").write_text('{"messages": []}\n')
    Training(node_id="n1", metro="fra", work_dir=work, model_dirs={},
             settings=FinetuneSettings(), blobs=lambda: None, publish=_publish)
    assert work.is_dir()
    assert list(work.iterdir()) == []


async def test_a_start_for_a_job_whose_run_here_ended_is_a_new_run(tmp_path: Path) -> None:
    """After a partition the scheduler stops a node's stray run and may send the
    job back to it: that start is a new run, not a repeat to ignore."""
    training = Training(node_id="n1", metro="fra", work_dir=tmp_path / "jobs", model_dirs={},
                        settings=FinetuneSettings(), blobs=lambda: None, publish=_publish)
    start = TrainStart(node_id="n1", job_id="ftjob-1", org_id="o", model="volt-tiny",
                       training_file="file-1", n_epochs=1, batch_size=1, learning_rate=1e-3,
                       lora_rank=8, lora_alpha=16, seed=1)
    training.command(start)
    training.command(start)  # a repeat while it runs: one run
    assert len(training._tasks) == 1
    await asyncio.gather(*training._tasks.values())
    [ended] = training.statuses()
    assert ended.state == "failed"  # this node has no volt-tiny weights
    training.command(start)
    [again] = training.statuses()
    assert again.state == "running"
    await asyncio.gather(*training._tasks.values())
