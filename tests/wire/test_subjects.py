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
