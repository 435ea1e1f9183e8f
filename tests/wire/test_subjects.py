from __future__ import annotations

import pytest

from volt.wire import subjects


def test_payload_subjects_are_metro_local() -> None:
    for subject in (
        subjects.infer("fra", "n1"),
        subjects.cancel("fra", "n1"),
        subjects.reply("fra", "api-1", "r1"),
    ):
        assert subject.startswith("volt.fra.")
        assert subjects.is_metro_local(subject)


def test_global_subjects_carry_no_metro() -> None:
    for subject in (subjects.node_event("n1", "hello"), subjects.node_event("n1", "heartbeat"),
                    subjects.node_event("n1", "goodbye"), subjects.attest("n1", "evidence"),
                    subjects.SCHED_VIEW, subjects.SCHED_VIEW_GET, subjects.SCHED_PLACE,
                    subjects.usage("fra")):
        assert not subjects.is_metro_local(subject)


@pytest.mark.parametrize("bad", ["", "a.b", "*", ">", "has space", "x\n"])
def test_tokens_cannot_escape_their_place(bad: str) -> None:
    with pytest.raises(ValueError, match="subject token"):
        subjects.infer(bad, "n1")


def test_reply_subjects_parse_back_and_nothing_else_does() -> None:
    built = subjects.reply("fra", "api-1", "req123")
    assert subjects.parse_reply(built) == ("fra", "api-1", "req123")
    for other in ("volt.usage.fra", "volt.audit.events", "volt.fra.node.n1.infer",
                  "volt.fra.reply.api-1", "volt.fra.reply.api-1.r.extra", "_INBOX.abc",
                  "volt.sched.reply.api.r", "volt.fra.reply.*.r", "volt.fra.reply.a.>"):
        assert subjects.parse_reply(other) is None, other


def test_a_nodes_subjects_name_it_and_its_prefix_covers_them() -> None:
    for subject in [subjects.node_event("n1", e) for e in subjects.NODE_EVENTS] + \
            [subjects.attest("n1", step) for step in subjects.ATTEST_STEPS]:
        assert subjects.node_of(subject) == "n1"
        assert subject.startswith(subjects.node_prefix("n1")[:-1])
    for other in ("volt.node", "volt.node.*.hello", "volt.fra.node.n1.infer", "volt.sched.view"):
        assert subjects.node_of(other) is None, other
    with pytest.raises(ValueError):
        subjects.node_event("n1", "infer")
    with pytest.raises(ValueError):
        subjects.attest("n1.x", "nonce")
