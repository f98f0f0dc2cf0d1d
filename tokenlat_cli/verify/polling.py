"""Waiting for something that arrives eventually: data in Prometheus, a failure counted, a line in a log.

Everything verify waits for crosses processes and batching intervals, so it is polled, and every wait is bounded
by a deadline. Two forms: :func:`poll` hands back the last value read whatever it is (a check then reports it as
the observed value), and :func:`wait_until` raises :class:`WaitTimeout` naming what it waited for and what it last
saw (where nothing useful can go on without the value).
"""

from __future__ import annotations

import reprlib
import time
from collections.abc import Callable
from typing import TypeVar

from tokenlat_cli import stopping

T = TypeVar("T")

# How much of the last value a WaitTimeout shows: enough to tell why, not a whole log file.
_LAST_SEEN = reprlib.Repr()
_LAST_SEEN.maxstring = 300
_LAST_SEEN.maxother = 300


class WaitTimeout(TimeoutError):
    """The condition did not hold within the deadline; ``last`` is the value last read."""

    def __init__(self, what: str, timeout: float, last: object) -> None:
        super().__init__(f"{what}: not within {timeout:g}s; last seen {_LAST_SEEN.repr(last)}")
        self.what = what
        self.timeout = timeout
        self.last = last


def poll(read: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.5) -> T:
    """Call ``read`` until ``done`` says its value will do or the deadline passes; return the last value read
    (read at least once, and once more at the deadline, so that a slow read does not waste the last chance)."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        stopping.sleep(interval)  # a stop request (SIGTERM, Ctrl-C) ends the wait here
        value = read()
    return value


def wait_until(read: Callable[[], T], done: Callable[[T], bool], timeout: float, what: str, interval: float = 0.5) -> T:
    """:func:`poll`, and the value once ``done`` holds for it; WaitTimeout (naming ``what`` and the last value)
    when it never did."""
    value = poll(read, done, timeout, interval)
    if not done(value):
        raise WaitTimeout(what, timeout, value)
    return value


def wait_for_value(
    read: Callable[[], float | None], expected: float, timeout: float, interval: float = 0.5
) -> float | None:
    """Poll until ``read()`` returns ``expected`` or the deadline passes; return the last value read."""
    return poll(read, lambda value: value == expected, timeout, interval)
