"""``volt audit verify`` for an org admin: check the org's audit events against
the log's signed checkpoint, and the log against the last checkpoint seen.

1. The latest checkpoint's signature, by the key pinned on first use (a
   different key later is a failure, not a silent re-pin).
2. Consistency (RFC 9162 §2.1.4) from the last checkpoint this machine saw to
   the new one: the log only grew; nothing before was rewritten.
3. Each of the org's events that the checkpoint covers: its inclusion proof
   (§2.1.3) from the exact bytes that were logged to the checkpoint's root,
   and that those bytes are the event shown. An edited, moved or forged event
   fails.

What was seen is remembered in ``~/.config/volt/audit-state.json`` (per base
URL) only when everything passed.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from volt.identity import merkle
from volt.identity.audit_format import Checkpoint, decode_leaf, public_key_id, signature_valid
from volt.sdk._client import Client
from volt.sdk._credentials import config_dir


def state_path() -> Path:
    return config_dir() / "audit-state.json"


@dataclass
class VerifyReport:
    tree_size: int = 0
    events_checked: int = 0
    events_pending: int = 0
    """Events newer than the checkpoint (the next run checks them)."""
    consistent_from: int | None = None
    pinned_now: bool = False
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


def verify(client: Client, *, state_file: Path | None = None) -> VerifyReport:
    state_file = state_file or state_path()
    report = VerifyReport()
    try:
        states = json.loads(state_file.read_text())
    except (OSError, ValueError):
        states = {}
    state = states.get(client.base_url, {})

    answer = client.audit.checkpoint()
    checkpoint = Checkpoint(answer.tree_size, _b64(answer.root_hash), answer.time_ms,
                            answer.key_id, _b64(answer.signature))
    public = Ed25519PublicKey.from_public_bytes(_b64(answer.public_key))
    pinned = state.get("public_key")
    if pinned is None:
        report.pinned_now = True
    elif pinned != answer.public_key:
        was = public_key_id(Ed25519PublicKey.from_public_bytes(_b64(pinned)))
        report.problems.append("the log's signing key changed since the last check "
                               f"(pinned {was}, now {answer.key_id})")
    if not signature_valid(checkpoint, public):
        report.problems.append(f"the checkpoint of {checkpoint.tree_size} events has a bad "
                               "signature")
    report.tree_size = checkpoint.tree_size

    seen_size, seen_root = state.get("tree_size"), state.get("root_hash")
    if seen_size is not None and seen_root is not None:
        if checkpoint.tree_size < seen_size:
            report.problems.append(f"the log shrank from {seen_size} to {checkpoint.tree_size} "
                                   "events")
        elif checkpoint.tree_size == seen_size:
            if _b64(seen_root) != checkpoint.root_hash:
                report.problems.append("the log was rewritten: same size, another root")
        elif seen_size > 0:
            proof = client.audit.consistency(seen_size, checkpoint.tree_size)
            if not merkle.verify_consistency(seen_size, checkpoint.tree_size, _b64(seen_root),
                                             checkpoint.root_hash, [_b64(h) for h in proof.proof]):
                report.problems.append(f"the log of {checkpoint.tree_size} events does not "
                                       f"extend the one of {seen_size} seen before: history "
                                       "was rewritten")
            report.consistent_from = seen_size

    for tree_size, record in client.audit.events(tree_size=checkpoint.tree_size):
        if record.inclusion_proof is None:
            report.events_pending += 1
            continue
        body = _b64(record.leaf)
        leaf = merkle.leaf_hash(body)
        if decode_leaf(body) != record.event:
            report.problems.append(f"event {record.seq} ({record.event.event_id}) as shown is "
                                   "not the event that was logged")
        elif tree_size != checkpoint.tree_size or not merkle.verify_inclusion(
                record.seq, checkpoint.tree_size, leaf,
                [_b64(h) for h in record.inclusion_proof], checkpoint.root_hash):
            report.problems.append(f"event {record.seq} ({record.event.event_id}) is not in the "
                                   "log as checkpointed: it was edited, moved or forged")
        else:
            report.events_checked += 1

    if report.ok:
        states[client.base_url] = {"public_key": answer.public_key,
                                   "tree_size": checkpoint.tree_size,
                                   "root_hash": answer.root_hash}
        state_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        state_file.write_text(json.dumps(states, indent=1))
    return report
