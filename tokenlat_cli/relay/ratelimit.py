"""The robots' rate limits, kept on our side, on a clock that tests replace.

Each robot allows so many messages per window (DingTalk 20 a minute; Feishu 5 a second and 100 a minute; WeCom 20
a minute) and answers "too frequent" beyond it, dropping the message. :class:`RateLimiter` keeps the times of the
last sends and says how long to wait before the next one fits every window, counted as sliding windows: stricter
than a robot that counts per calendar minute, so never over its limit whichever way it counts. When a robot says
"too frequent" anyway (another sender shares the robot), :meth:`RateLimiter.pause` holds every send back for the
backoff.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

Clock = Callable[[], float]


@dataclass(frozen=True)
class Window:
    limit: int  # messages
    seconds: float

    def __str__(self) -> str:
        return f"{self.limit}/{self.seconds:g}s"


class RateLimiter:
    """Sends allowed by every window of ``windows``, and no send while paused."""

    def __init__(self, windows: Sequence[Window], clock: Clock = time.monotonic) -> None:
        if not windows:
            raise ValueError("a rate limiter needs at least one window")
        self.windows = tuple(windows)
        self._clock = clock
        self._longest = max(w.seconds for w in self.windows)
        self._sent: deque[float] = deque(maxlen=max(w.limit for w in self.windows))
        self._paused_until = float("-inf")

    def wait(self) -> float:
        """Seconds until one more send fits every window (0: now)."""
        now = self._clock()
        while self._sent and self._sent[0] <= now - self._longest:
            self._sent.popleft()
        wait = max(0.0, self._paused_until - now)
        sent = list(self._sent)
        for window in self.windows:
            recent = [t for t in sent if t > now - window.seconds]
            if len(recent) >= window.limit:
                # The send that must leave the window before one more fits in it.
                wait = max(wait, recent[len(recent) - window.limit] + window.seconds - now)
        return wait

    def record(self) -> None:
        """A send happened now (whatever its outcome: the robot counted it)."""
        self._sent.append(self._clock())

    def pause(self, seconds: float) -> None:
        """No send for ``seconds`` from now (the robot said too frequent)."""
        self._paused_until = max(self._paused_until, self._clock() + seconds)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff: ``first`` seconds after the first failed attempt, doubling, at most ``longest``; a
    robot's Retry-After wins when longer (up to ``longest``)."""

    first: float = 2.0
    longest: float = 60.0

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """The wait after ``attempts`` failed attempts (1 or more)."""
        delay = min(self.longest, self.first * 2 ** max(0, attempts - 1))
        if retry_after is not None and retry_after > 0:
            delay = max(delay, min(retry_after, self.longest))
        return delay
