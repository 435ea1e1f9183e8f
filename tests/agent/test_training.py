"""The agent's fine-tuning side without a bus: what a killed agent left in its
work folder (a training file's plaintext among it) is gone before the next
one takes a job."""

from __future__ import annotations

from pathlib import Path

from volt.agent.training import Training
from volt.config import FinetuneSettings


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
