"""A fine-tune job's lifecycle: OpenAI's states, one transition table.

::

                                        ┌────────requeue─────────┐
                                        ▼                        │
    VALIDATING_FILES ──validated──► QUEUED ──started──► RUNNING ──succeeded──► SUCCEEDED
          │                           │                    │
          └──fail──► FAILED ◄──fail───┴────────fail────────┘
          └──cancel─► CANCELLED ◄──cancel──────┴──cancel───┘

The scheduler is the only writer. A job is RUNNING from the moment an agent
is chosen for it (``status.node_id``) — the agent's heartbeats then say how it
goes, so a restarted scheduler reads the job's fate from them. A job whose
agent lost it (SIGKILL, reboot, a node gone) is queued again, to go on from
its last checkpoint on whichever node of its metro is free, a bounded number
of times (``finetune.max_attempts``); after that it fails with the reason
rather than staying RUNNING forever.
"""

from __future__ import annotations

from enum import StrEnum

from volt.lifecycle import Lifecycle


class JobState(StrEnum):
    VALIDATING_FILES = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class JobEvent(StrEnum):
    VALIDATED = "validated"
    STARTED = "started"
    REQUEUE = "requeue"
    SUCCEEDED = "succeeded"
    FAIL = "fail"
    CANCEL = "cancel"


S, E = JobState, JobEvent
TRANSITIONS: dict[tuple[JobState, JobEvent], JobState] = {
    (S.VALIDATING_FILES, E.VALIDATED): S.QUEUED,
    (S.VALIDATING_FILES, E.FAIL): S.FAILED,
    (S.VALIDATING_FILES, E.CANCEL): S.CANCELLED,
    (S.QUEUED, E.STARTED): S.RUNNING,
    (S.QUEUED, E.FAIL): S.FAILED,
    (S.QUEUED, E.CANCEL): S.CANCELLED,
    (S.RUNNING, E.SUCCEEDED): S.SUCCEEDED,
    (S.RUNNING, E.REQUEUE): S.QUEUED,
    (S.RUNNING, E.FAIL): S.FAILED,
    (S.RUNNING, E.CANCEL): S.CANCELLED,
}

TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.CANCELLED})
LIVE = frozenset(JobState) - TERMINAL

JOBS: Lifecycle[JobState, JobEvent] = Lifecycle("fine-tuning job", TRANSITIONS, TERMINAL)
