"""Tuned models' ids, in OpenAI's form: ``ft:<base>:<org>:<suffix>:<job>``, and
a checkpoint of one ``ft:<base>:<org>:<suffix>:<job>:ckpt-step-<n>``.

The id names everything Volt needs to serve it without a lookup on the hot
path: the base model whose engines load the adapter, the org that alone may
call it, and the job that made it and the step (the adapter's name in the blob
store).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "ft:"
_TOKEN = r"[A-Za-z0-9_-]{1,64}"
_ID = re.compile(rf"^ft:(?P<base>{_TOKEN}):(?P<org>{_TOKEN}):(?P<suffix>[A-Za-z0-9_-]{{0,64}}):"
                 rf"(?P<job>ftjob-[a-f0-9]{{16,32}})(?::ckpt-step-(?P<step>[1-9][0-9]{{0,8}}))?$")


@dataclass(frozen=True, slots=True)
class TunedModel:
    base: str
    org: str
    suffix: str
    job_id: str
    step: int | None = None
    """A checkpoint of the job, at this step; None: the job's final model."""

    @property
    def id(self) -> str:
        final = f"ft:{self.base}:{self.org}:{self.suffix}:{self.job_id}"
        return final if self.step is None else f"{final}:ckpt-step-{self.step}"

    def checkpoint(self, step: int) -> TunedModel:
        return TunedModel(self.base, self.org, self.suffix, self.job_id, step)


def parse(model: str) -> TunedModel | None:
    """The tuned model ``model`` names, or None (a base model, or not an id at all)."""
    if not model.startswith(PREFIX):
        return None
    match = _ID.match(model)
    if match is None:
        return None
    step = int(match["step"]) if match["step"] else None
    return TunedModel(match["base"], match["org"], match["suffix"], match["job"], step)


def org_token(org_id: str) -> str:
    """The org as it appears in a model id (ids are subject-safe already)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", org_id)[:64]
