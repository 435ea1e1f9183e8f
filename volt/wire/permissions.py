"""What each role may publish and subscribe to on the bus: least privilege.

nats-server enforces these per user, and each process is its own user (its
X.509-SVID mapped by ``verify_and_map``; ``volt/wire/nats_config.py`` writes
the server's configuration from them). Built from ``subjects`` only, so the
allow lists and the subjects the code uses cannot drift apart.

* A **node** reads only its own requests and cancels, answers only on its own
  metro's reply subjects, publishes its events and attestation under its own
  ``volt.node.<node_id>.`` prefix, and its metro's usage records. It cannot read
  another node's requests, another metro's payloads, or speak for another node.
  It reads and writes its own metro's blob bucket (training files, adapters)
  and no other.
* An **enrolling node** (one that has not yet passed attestation) may only
  attest; its first passing verdict earns it the node SVID.
* An **API replica** sends requests and cancels to nodes, reads only its own
  reply subjects, asks the scheduler, writes audit events and the shared
  limits (a JetStream key-value bucket), and stores training files in their
  metro's object store bucket (sealed: it holds only ciphertext).
* The **scheduler** reads node events and answers requests (``allow_responses``:
  only to the reply subject of a request it received), and owns the JetStream
  streams. It never sees a payload subject; of the blob buckets it reads names
  and ages and deletes blobs (the sweeper), never writing a blob's bytes.
* An **operator** identity may do anything (debugging, tests that watch the bus).
"""

from __future__ import annotations

from dataclasses import dataclass

from volt.wire import subjects


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    allow_responses: bool = False
    """May publish once to the reply subject of each request it received."""

    def as_config(self) -> dict[str, object]:
        """nats-server's ``permissions`` block."""
        block: dict[str, object] = {"publish": {"allow": list(self.publish)},
                                    "subscribe": {"allow": list(self.subscribe)}}
        if self.allow_responses:
            block["allow_responses"] = True
        return block


def _stream_admin(stream: str) -> tuple[str, ...]:
    """Look a stream up and create it if missing (any service may start first)."""
    return (f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.CREATE.{stream}")


def _object_store(bucket: str) -> tuple[str, ...]:
    """Read, write and delete objects of one JetStream object store bucket (a
    ``*`` bucket: every bucket), as nats-py's object store does them: meta and
    chunk messages, the stream's info, last-message and direct gets, an
    ordered consumer's create, flow control and delete, the purge of a
    deleted object's chunks."""
    stream = "*" if bucket == "*" else f"OBJ_{bucket}"
    return (
        f"$O.{bucket}.>",
        *_stream_admin(stream),
        "$JS.API.STREAM.NAMES",  # how a subscription finds the bucket's stream
        f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>", f"$JS.API.STREAM.PURGE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>", f"$JS.FC.{stream}.>",
    )


def node(metro: str, node_id: str) -> Permissions:
    return Permissions(
        publish=(
            subjects.node_prefix(node_id),
            subjects.replies_in(metro),
            subjects.usage(metro),
            *_stream_admin(subjects.USAGE_STREAM),
            # Its metro's training files (to train) and adapters (to serve).
            *_object_store(subjects.blob_bucket(metro)),
        ),
        subscribe=(
            subjects.infer(metro, node_id),
            subjects.cancel(metro, node_id),
            subjects.assignment(node_id),
            subjects.train(node_id),
            subjects.inbox_prefix("node", node_id) + ".>",
        ),
    )


def enrolling(node_id: str) -> Permissions:
    """A node before its first passing attestation: it may attest, nothing else."""
    return Permissions(
        publish=tuple(subjects.attest(node_id, step) for step in subjects.ATTEST_STEPS),
        subscribe=(subjects.inbox_prefix("node", node_id) + ".>",),
    )


def api(replica_id: str) -> Permissions:
    kv_stream = f"KV_{subjects.LIMITS_BUCKET}"
    return Permissions(
        publish=(
            subjects.INFER_ALL, subjects.CANCEL_ALL,
            subjects.SCHED_VIEW_GET, subjects.SCHED_PLACE, subjects.SCHED_FORGE,
            subjects.SCHED_VAULT, subjects.SCHED_FINETUNE,
            subjects.AUDIT_EVENTS, *_stream_admin(subjects.AUDIT_STREAM),
            # Training files: stored (and deleted) in the metro the org chose.
            *_object_store("*"),
            subjects.IDENTITY_REVOKED,
            *_stream_admin(kv_stream), f"$JS.API.DIRECT.GET.{kv_stream}.>",
            f"$JS.API.STREAM.MSG.GET.{kv_stream}", f"$KV.{subjects.LIMITS_BUCKET}.>",
        ),
        subscribe=(
            subjects.reply_wildcard(replica_id),
            subjects.SCHED_VIEW, subjects.IDENTITY_REVOKED,
            subjects.inbox_prefix("api", replica_id) + ".>",
        ),
    )


def scheduler() -> Permissions:
    return Permissions(
        publish=(
            subjects.SCHED_VIEW, subjects.IDENTITY_REVOKED, subjects.AUDIT_EVENTS,
            subjects.ASSIGN_ALL, subjects.TRAIN_ALL, "$JS.API.>", "$JS.ACK.>",
            # The blob sweeper: it lists the blobs' names and deletes them (a
            # delete marker is a meta message); it never writes a chunk.
            "$O.*.M.>", "$JS.FC.>",
        ),
        subscribe=(
            *(subjects.node_events(event) for event in subjects.NODE_EVENTS),
            *(subjects.attest_all(step) for step in subjects.ATTEST_STEPS),
            subjects.SCHED_VIEW_GET, subjects.SCHED_PLACE, subjects.SCHED_FORGE,
            subjects.SCHED_VAULT, subjects.SCHED_FINETUNE, subjects.IDENTITY_REVOKED,
            subjects.inbox_prefix("service", "scheduler") + ".>",
        ),
        allow_responses=True,
    )


def operator() -> Permissions:
    return Permissions(publish=(">",), subscribe=(">",))


def inbox_for(role: str, name: str) -> str:
    """The inbox prefix a process of ``role`` uses (its permissions allow only it)."""
    if role == "scheduler":
        return subjects.inbox_prefix("service", "scheduler")
    if role == "operator":
        return subjects.inbox_prefix("operator", name)
    return subjects.inbox_prefix(role, name)
