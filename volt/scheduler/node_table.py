"""The scheduler's live table of nodes, built from hellos and heartbeats.

A node that misses ``missed_heartbeats`` heartbeats (at the interval it
announced) becomes LOST and leaves placement; its next heartbeat brings it
back. Time comes from an injected clock so tests need not sleep.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from volt.gpu_health import health_problems
from volt.scheduler.node_states import (
    GONE,
    LIVE,
    NodeEvent,
    NodeState,
    initial_state,
    next_state,
)
from volt.wire import EngineLoad, GpuInfo, Heartbeat, NodeGoodbye, NodeHello, NodeView


@dataclass(slots=True)
class NodeRecord:
    node_id: str
    metro: str
    tier: str
    models: list[str]
    state: NodeState
    last_seen: float
    heartbeat_interval_s: float
    load: EngineLoad = field(default_factory=EngineLoad)
    gpus: list[GpuInfo] = field(default_factory=list)
    engine: str = "cpu"
    inflight_by_replica: dict[str, int] = field(default_factory=dict)
    capacity: str = "live"
    problems: list[str] = field(default_factory=list)
    """Why the node is unhealthy (empty unless it is)."""
    seal: str = ""
    attestation: str = "not_attested"
    engine_ready: bool = False
    base_problems: list[str] = field(default_factory=list)
    """What the node's own messages show (GPU health, the seal); ``problems``
    adds what the scheduler knows (attestation)."""
    rack: str = ""
    nvlink_domain: str = ""
    lease_id: str = ""
    """The Forge lease the node says its GPUs are handed to (its heartbeat)."""
    adapters: list[str] = field(default_factory=list)
    """Tuned models its engines have loaded (its heartbeat)."""
    trains: list[str] = field(default_factory=list)
    """Base models it can fine-tune (its heartbeat)."""

    def view(self) -> NodeView:
        return NodeView(
            node_id=self.node_id, metro=self.metro, tier=self.tier, models=self.models,
            state=self.state.value, load=self.load, inflight_by_replica=self.inflight_by_replica,
            capacity=self.capacity, problems=self.problems, seal=self.seal,
            attestation=self.attestation, adapters=self.adapters,
        )


@dataclass(slots=True)
class Attestation:
    passed: bool
    reasons: list[str]
    expires: float
    """Clock time after which the verdict no longer counts."""


class NodeTable:
    def __init__(
        self,
        *,
        missed_heartbeats: int = 3,
        forget_after_s: float = 600.0,
        clock: Callable[[], float] = time.monotonic,
        allow_unsealed: bool = False,
        require_attestation: bool = False,
    ) -> None:
        self.allow_unsealed = allow_unsealed
        self.require_attestation = require_attestation
        self._verdicts: dict[str, Attestation] = {}
        self.missed_heartbeats = missed_heartbeats
        self.forget_after_s = forget_after_s
        self.clock = clock
        self._nodes: dict[str, NodeRecord] = {}

    def __len__(self) -> int:
        return len(self._nodes)

    def get(self, node_id: str) -> NodeRecord | None:
        return self._nodes.get(node_id)

    def observe(self, message: NodeHello | Heartbeat | NodeGoodbye) -> bool:
        """Apply one message; True when placement-relevant facts changed."""
        if isinstance(message, NodeGoodbye):
            return self._goodbye(message.node_id)
        now = self.clock()
        ready = isinstance(message, Heartbeat) and message.engine_ready
        base = [f"gpu {gpu.index}: {problem}" for gpu in message.gpus
                for problem in health_problems(gpu)]
        if isinstance(message, Heartbeat):
            base += self._seal_problems(message)
        attestation, trust = self._attestation(message.node_id)
        problems = base + trust
        event = (NodeEvent.HEARTBEAT_UNHEALTHY if problems
                 else NodeEvent.HEARTBEAT_READY if ready else NodeEvent.HEARTBEAT_NOT_READY)
        record = self._nodes.get(message.node_id)
        if record is None:
            self._nodes[message.node_id] = NodeRecord(
                node_id=message.node_id, metro=message.metro, tier=message.tier,
                models=list(message.models), state=initial_state(event),
                last_seen=now, heartbeat_interval_s=message.heartbeat_interval_s,
                load=message.load if isinstance(message, Heartbeat) else EngineLoad(),
                inflight_by_replica=(dict(message.inflight_by_replica)
                                     if isinstance(message, Heartbeat) else {}),
                gpus=list(message.gpus),
                engine=message.engine if isinstance(message, NodeHello) else "cpu",
                capacity=message.capacity, problems=problems,
                seal=message.seal if isinstance(message, Heartbeat) else "",
                attestation=attestation, engine_ready=ready, base_problems=base,
                rack=message.rack, nvlink_domain=message.nvlink_domain,
                lease_id=message.lease_id if isinstance(message, Heartbeat) else "",
                adapters=list(message.adapters) if isinstance(message, Heartbeat) else [],
                trains=list(message.trains) if isinstance(message, Heartbeat) else [],
            )
            return True
        if isinstance(message, NodeHello) and record.state in LIVE and not problems:
            # A hello from a live node means its agent restarted; its engine
            # readiness comes with the next heartbeat.
            event = NodeEvent.HEARTBEAT_NOT_READY
        before = (record.state, record.metro, record.tier, record.models, record.capacity,
                  record.adapters)
        record.state = next_state(record.state, event)
        record.metro, record.tier, record.models = message.metro, message.tier, list(message.models)
        record.capacity = message.capacity
        record.rack, record.nvlink_domain = message.rack, message.nvlink_domain
        record.problems, record.base_problems = problems, base
        record.attestation, record.engine_ready = attestation, ready
        if isinstance(message, Heartbeat):
            record.seal = message.seal
        record.last_seen = now
        record.heartbeat_interval_s = message.heartbeat_interval_s
        record.gpus = list(message.gpus)
        if isinstance(message, Heartbeat):
            record.load = message.load
            record.inflight_by_replica = dict(message.inflight_by_replica)
            record.lease_id = message.lease_id
            record.adapters = list(message.adapters)
            record.trains = list(message.trains)
        else:
            record.engine = message.engine
        return before != (record.state, record.metro, record.tier, record.models,
                          record.capacity, record.adapters)

    # -- attestation ---------------------------------------------------------------

    def _attestation(self, node_id: str) -> tuple[str, list[str]]:
        """(``attested``/``failed``/``not_attested``, why the node may not take work)."""
        verdict = self._verdicts.get(node_id)
        if verdict is not None and not verdict.passed:
            return "failed", [f"attestation failed: {'; '.join(verdict.reasons)}"]
        if verdict is not None and verdict.expires > self.clock():
            return "attested", []
        if not self.require_attestation:
            return "not_attested", []  # development: visible, never a silent pass
        return "not_attested", ["not attested" if verdict is None else
                                "its last attestation expired"]

    def set_verdict(self, node_id: str, *, passed: bool, reasons: list[str],
                    ttl_s: float) -> bool:
        """The node's latest verdict: a failing one quarantines it at once.
        True when its placeability changed."""
        self._verdicts[node_id] = Attestation(passed, reasons, self.clock() + ttl_s)
        record = self._nodes.get(node_id)
        return record is not None and self._reevaluate(record)

    def forget_verdict(self, node_id: str) -> None:
        """A node enrols afresh (a new boot): its old verdict no longer speaks for it."""
        self._verdicts.pop(node_id, None)

    def expire_verdicts(self) -> list[str]:
        """Nodes whose verdict just went stale: they leave placement."""
        now = self.clock()
        return [record.node_id for record in self._nodes.values()
                if record.state in LIVE and record.attestation == "attested"
                and (verdict := self._verdicts.get(record.node_id)) is not None
                and verdict.expires <= now and self._reevaluate(record)]

    def _reevaluate(self, record: NodeRecord) -> bool:
        if record.state not in LIVE:
            return False
        record.attestation, trust = self._attestation(record.node_id)
        record.problems = record.base_problems + trust
        event = (NodeEvent.HEARTBEAT_UNHEALTHY if record.problems
                 else NodeEvent.HEARTBEAT_READY if record.engine_ready
                 else NodeEvent.HEARTBEAT_NOT_READY)
        before = record.state
        record.state = next_state(record.state, event)
        return before != record.state

    def _seal_problems(self, heartbeat: Heartbeat) -> list[str]:
        """A node whose engines are not sealed takes no work (``volt/agent/seal.py``)."""
        if heartbeat.seal == "sealed":
            return []
        if heartbeat.seal == "insecure" and self.allow_unsealed:
            return []
        if heartbeat.seal == "insecure":
            return ["engines unsealed (insecure development flag; scheduler.allow_unsealed "
                    "is off)"]
        return [f"engines not sealed: {heartbeat.seal_problem or 'the agent did not say'}"]

    def _goodbye(self, node_id: str) -> bool:
        record = self._nodes.get(node_id)
        if record is None or record.state is NodeState.LEFT:
            return False
        record.state = next_state(record.state, NodeEvent.GOODBYE)
        return True

    def sweep(self) -> list[str]:
        """Expire silent nodes and forget long-gone ones; returns the expired ids."""
        now = self.clock()
        expired = []
        for record in list(self._nodes.values()):
            silent_for = now - record.last_seen
            if record.state in LIVE:
                if silent_for > self.missed_heartbeats * record.heartbeat_interval_s:
                    record.state = next_state(record.state, NodeEvent.EXPIRE)
                    expired.append(record.node_id)
            elif record.state in GONE and silent_for > self.forget_after_s:
                del self._nodes[record.node_id]
        return expired

    def records(self) -> list[NodeRecord]:
        return list(self._nodes.values())

    def views(self) -> list[NodeView]:
        return [record.view() for record in self._nodes.values()]

    def models(self) -> set[str]:
        return {model for record in self._nodes.values() for model in record.models}
