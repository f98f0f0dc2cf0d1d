"""Bounded waits: the value once it arrives, the last one at the deadline, and an error that says what was seen."""

from __future__ import annotations

import pytest

from tokenlat_cli.verify.polling import WaitTimeout, poll, wait_for_value, wait_until


def test_wait_for_value_polls_until_expected() -> None:
    readings = iter([None, 1.0, 2.0, 3.0])
    assert wait_for_value(lambda: next(readings), 3.0, timeout=5, interval=0) == 3.0


def test_wait_for_value_returns_last_value_at_deadline() -> None:
    assert wait_for_value(lambda: 1.0, 2.0, timeout=0, interval=0) == 1.0


def test_poll_reads_once_more_at_the_deadline_and_stops_when_done() -> None:
    reads: list[int] = []

    def read() -> int:
        reads.append(len(reads))
        return reads[-1]

    assert poll(read, lambda value: value >= 2, timeout=5, interval=0) == 2
    assert reads == [0, 1, 2]


def test_wait_until_returns_the_value_that_satisfied_it() -> None:
    readings = iter(["starting", "ready: yes"])
    assert (
        wait_until(lambda: next(readings), lambda text: "ready" in text, 5, "the log to say ready", 0) == "ready: yes"
    )


def test_wait_until_names_what_it_waited_for_and_what_it_last_saw() -> None:
    with pytest.raises(WaitTimeout) as excinfo:
        wait_until(lambda: "x" * 10_000 + "still starting", lambda text: "ready" in text, 0, "the log to say ready", 0)
    message = str(excinfo.value)
    assert message.startswith("the log to say ready: not within 0s; last seen 'xxx")
    assert len(message) < 400  # the last value shortened: a whole log file would drown the reason
    assert excinfo.value.last.endswith("still starting")
    assert isinstance(excinfo.value, TimeoutError)
