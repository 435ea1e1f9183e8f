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
    for subject in (subjects.NODE_HELLO, subjects.NODE_HEARTBEAT, subjects.NODE_GOODBYE,
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
