"""Every NATS subject Volt uses is built here and nowhere else.

Two kinds of subject:

* global subjects (``volt.node.*``, ``volt.sched.*``) carry metadata only: node
  identity, load, placement views. They may cross metros.
* payload subjects (``volt.<metro>.…``) carry prompts and completions. They are
  metro-local so that a NATS deployment can keep them inside the metro (a leaf
  node or account per metro) and a payload never leaves the metro that serves it.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Global, metadata only.
#
# What a node publishes sits under its own prefix, ``volt.node.<node_id>.``, so
# the bus can allow each node exactly its own subjects (wire/permissions.py) and
# the scheduler can check that a message names the node whose subject it came on.
NODE_EVENTS = ("hello", "heartbeat", "goodbye", "training")
ATTEST_STEPS = ("enroll", "proof", "nonce", "evidence")
"""Request/reply with the scheduler: ``enroll`` (a node presents its TPM; the answer
is a credential challenge), ``proof`` (the activated credential; the answer says
enrolled or not), ``nonce`` (a fresh nonce for the next quote), ``evidence`` (a
quote and event log; the answer is the verdict)."""
SCHED_VIEW = "volt.sched.view"
"""The scheduler publishes its placement view here; API replicas route from it."""
SCHED_VIEW_GET = "volt.sched.view.get"
"""Request/reply: the current placement view, for a replica that just (re)connected."""
SCHED_PLACE = "volt.sched.place"
"""Request/reply: ask the scheduler to place one request (debugging and the placement bench)."""
SCHED_FORGE = "volt.sched.forge"
"""Request/reply: the API's Forge commands (leases, kubeconfigs, availability)."""
SCHED_VAULT = "volt.sched.vault"
"""Request/reply: the API's Vault commands (racks, attestation reports, verifier keys)."""
SCHED_FINETUNE = "volt.sched.finetune"
"""Request/reply: the API's fine-tuning commands (files' records, jobs)."""
USAGE_STREAM = "VOLT_USAGE"
"""The JetStream stream that holds usage records until the scheduler has stored them."""


def usage(metro: str) -> str:
    """Usage records (token counts only) from the pods of one metro."""
    return f"volt.usage.{token(metro)}"


USAGE_ALL = "volt.usage.*"

AUDIT_EVENTS = "volt.audit.events"
"""Audit events from the API replicas (metadata only: never a body)."""
AUDIT_STREAM = "VOLT_AUDIT"
"""The JetStream stream that holds audit events until the scheduler has appended them."""
LIMITS_BUCKET = "volt_limits"
"""The JetStream key-value bucket where API replicas share rate-limit windows."""
IDENTITY_REVOKED = "volt.identity.revoked"
"""A key or token family was revoked: every API replica forgets it at once."""


def token(value: str) -> str:
    """Check that ``value`` is one subject token (no dots, wildcards or spaces)."""
    if not _TOKEN.fullmatch(value):
        raise ValueError(f"not a valid subject token: {value!r}")
    return value


def node_prefix(node_id: str) -> str:
    """Everything one node publishes outside its replies: ``volt.node.<node_id>.>``."""
    return f"volt.node.{token(node_id)}.>"


def _one_of(value: str, allowed: tuple[str, ...], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"not {what}: {value!r}")
    return value


ASSIGN_ALL = "volt.sched.assign.*"
"""Every node's assignment (the scheduler publishes them)."""


def assignment(node_id: str) -> str:
    """What the scheduler has given one node to: Spark, or a Forge lease."""
    return f"volt.sched.assign.{token(node_id)}"


TRAIN_ALL = "volt.sched.train.*"
"""Every node's training commands (the scheduler publishes them)."""


def train(node_id: str) -> str:
    """The scheduler's fine-tuning commands to one node (start, cancel)."""
    return f"volt.sched.train.{token(node_id)}"


def blob_bucket(metro: str) -> str:
    """The JetStream object store bucket of a metro's training files and adapters."""
    return f"volt-blobs-{token(metro)}"


def node_event(node_id: str, event: str) -> str:
    """A node's hello, heartbeat, goodbye or training progress."""
    return f"volt.node.{token(node_id)}.{_one_of(event, NODE_EVENTS, 'a node event')}"


def node_events(event: str) -> str:
    """One event of every node (the scheduler's subscription)."""
    return f"volt.node.*.{_one_of(event, NODE_EVENTS, 'a node event')}"


def attest(node_id: str, step: str) -> str:
    """One attestation step of one node (request/reply with the scheduler)."""
    return f"volt.node.{token(node_id)}.attest.{_one_of(step, ATTEST_STEPS, 'an attestation step')}"


def attest_all(step: str) -> str:
    return f"volt.node.*.attest.{_one_of(step, ATTEST_STEPS, 'an attestation step')}"


def node_of(subject: str) -> str | None:
    """The node a ``volt.node.<node_id>.…`` subject belongs to; None for any other."""
    parts = subject.split(".")
    if len(parts) < 4 or parts[0] != "volt" or parts[1] != "node":
        return None
    return parts[2] if _TOKEN.fullmatch(parts[2]) else None


def inbox_prefix(role: str, name: str) -> str:
    """Where one process receives request/reply answers (nats-py's ``inbox_prefix``).

    Per process, so the bus can let it read its own answers and nobody else's
    (the default ``_INBOX`` would have every process subscribe ``_INBOX.>``)."""
    return f"_INBOX.{token(role)}.{token(name)}"


def infer(metro: str, node_id: str) -> str:
    """Payload: inference requests for one node."""
    return f"volt.{token(metro)}.node.{token(node_id)}.infer"


def cancel(metro: str, node_id: str) -> str:
    """Cancellations for one node (same metro as the request it cancels)."""
    return f"volt.{token(metro)}.node.{token(node_id)}.cancel"


INFER_ALL = "volt.*.node.*.infer"
CANCEL_ALL = "volt.*.node.*.cancel"


def reply(metro: str, replica_id: str, request_id: str) -> str:
    """Payload: where a node streams one request's chunks back to the API replica."""
    return f"volt.{token(metro)}.reply.{token(replica_id)}.{token(request_id)}"


class ReplySubject(NamedTuple):
    metro: str
    replica_id: str
    request_id: str


def parse_reply(subject: str) -> ReplySubject | None:
    """The parts of a reply subject (``reply``'s inverse); None for anything else."""
    parts = subject.split(".")
    if len(parts) != 5 or parts[0] != "volt" or parts[2] != "reply":
        return None
    if not all(_TOKEN.fullmatch(part) for part in (parts[1], parts[3], parts[4])):
        return None
    if parts[1] in GLOBAL_FAMILIES:
        return None
    return ReplySubject(parts[1], parts[3], parts[4])


BATCH = "batch"
"""The last token of a batch reply subject (request ids are hex: never this)."""


def batch_reply(metro: str, replica_id: str) -> str:
    """Payload: a pod's replies to many requests of one API replica (``ReplyBatch``)."""
    return f"volt.{token(metro)}.reply.{token(replica_id)}.{BATCH}"


def reply_wildcard(replica_id: str) -> str:
    """All reply subjects of one API replica, in every metro it routes to."""
    return f"volt.*.reply.{token(replica_id)}.*"


def replies_in(metro: str) -> str:
    """Every reply subject of one metro (what a node there may answer on)."""
    return f"volt.{token(metro)}.reply.*.*"


def is_metro_local(subject: str) -> bool:
    """True for subjects that may carry payloads (``volt.<metro>.…``)."""
    parts = subject.split(".")
    return len(parts) >= 3 and parts[0] == "volt" and parts[1] not in GLOBAL_FAMILIES


GLOBAL_FAMILIES = frozenset({"node", "sched", "usage", "audit", "identity"})
"""The second token of every global (metadata-only) subject."""
