"""A node's message counts only on that node's own subjects."""

from __future__ import annotations

from nats.aio.msg import Msg

from volt.scheduler.senders import FORGED, sent_by
from volt.wire import subjects


def message_on(subject: str) -> Msg:
    return Msg(_client=None, subject=subject, data=b"")  # type: ignore[arg-type]


def test_a_message_naming_another_node_is_forged() -> None:
    before = FORGED._value.get()
    assert sent_by(message_on(subjects.node_event("n1", "heartbeat")), "n1")
    assert sent_by(message_on(subjects.attest("n1", "evidence")), "n1")
    assert not sent_by(message_on(subjects.node_event("n2", "heartbeat")), "n1")
    assert not sent_by(message_on(subjects.attest("n2", "evidence")), "n1")
    assert not sent_by(message_on("volt.fra.node.n1.infer"), "n1")
    assert FORGED._value.get() == before + 3
