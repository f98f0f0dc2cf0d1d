"""One queue and one sender per robot: coalesce what is queued, keep to the robot's rate, retry with backoff.

- **Grouping.** Alertmanager groups alerts already (one notification per alert group, repeated as the group
  changes). A notification for a group that is still queued replaces the queued one in its place (the newer holds
  the group's whole state): ``superseded``.
- **Coalescing.** Each send takes as many queued notifications as fit one message of the robot (messages.compose),
  so a burst of groups becomes a few messages instead of a message each.
- **Queueing.** The queue holds ``capacity`` notifications (the profile's ``alerting.queue_size``, default 100);
  one more drops the oldest: ``dropped{reason="queue_full"}``.
- **Rate.** A send waits until it fits every window of the robot's limit (ratelimit.RateLimiter).
- **Retrying.** "Too frequent" (the robot's code, or HTTP 429 with its Retry-After), a 5xx, a 408 or a network
  error puts the message's notifications back at the head of the queue and pauses the robot for an exponential
  backoff; after ``max_attempts`` sends they are dropped: ``dropped{reason="gave_up"}``. A refusal (bad signature,
  a body the robot rejects) drops them at once: ``dropped{reason="refused"}``.

Time comes from ``clock`` and waiting from ``sleep``: the tests run the sender on a fake clock.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from tokenlat_cli.relay.alerts import Notification
from tokenlat_cli.relay.messages import compose
from tokenlat_cli.relay.ratelimit import Backoff, Clock, RateLimiter
from tokenlat_cli.relay.robots import OK, OUTCOMES, RATE_LIMITED, REFUSED, RETRY, Result, Robot

log = logging.getLogger("tokenlat.relay")

DROP_REASONS = ("queue_full", "gave_up", "refused", "stopped")


class SendFailed(Exception):
    """The request did not get an answer (connection refused, timeout); the message is safe to show."""


class Transport(Protocol):
    async def __call__(self, url: str, body: bytes) -> tuple[int, dict[str, str], bytes]: ...


@dataclass
class RobotStats:
    queued: int = 0
    capacity: int = 0
    messages_sent: int = 0
    notifications_delivered: int = 0
    superseded: int = 0
    throttled: int = 0  # times a send waited for the rate limit
    attempts: Counter[str] = field(default_factory=Counter)  # outcome -> sends
    dropped: Counter[str] = field(default_factory=Counter)  # reason -> notifications

    def as_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["attempts"] = {o: self.attempts[o] for o in OUTCOMES}
        data["dropped"] = {r: self.dropped[r] for r in DROP_REASONS}
        return data


class Outbox:
    def __init__(
        self,
        robot: Robot,
        transport: Transport,
        capacity: int,
        max_attempts: int,
        backoff: Backoff | None = None,
        clock: Clock = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.robot = robot
        self.limiter = RateLimiter(robot.kind.windows, clock)
        self.backoff = backoff or Backoff()
        self.stats = RobotStats(capacity=capacity)
        self._transport = transport
        self._capacity = capacity
        self._max_attempts = max_attempts
        self._sleep = sleep
        self._wall = wall
        self._queue: deque[Notification] = deque()
        self._ready = asyncio.Event()
        self._closed = False

    # -- the receiving side

    def put(self, notification: Notification) -> None:
        if not self._supersede(notification):
            self._append(notification)
        self._ready.set()

    def _supersede(self, notification: Notification) -> bool:
        if not notification.group_key:
            return False
        for i, queued in enumerate(self._queue):
            if queued.group_key == notification.group_key:
                self._queue[i] = notification
                self.stats.superseded += 1
                return True
        return False

    def _append(self, notification: Notification) -> None:
        if len(self._queue) >= self._capacity:
            self._queue.popleft()
            self._drop(1, "queue_full")
        self._queue.append(notification)
        self.stats.queued = len(self._queue)

    def _drop(self, count: int, reason: str) -> None:
        self.stats.dropped[reason] += count
        self.stats.queued = len(self._queue)

    def close(self) -> None:
        """No more notifications: :meth:`run` returns once the queue is empty."""
        self._closed = True
        self._ready.set()

    def abandon(self) -> int:
        """Drop what is still queued (the drain ran out of time); how many."""
        count = len(self._queue)
        self._queue.clear()
        self._drop(count, "stopped")
        return count

    @property
    def pending(self) -> int:
        return len(self._queue)

    # -- the sending side

    async def run(self) -> None:
        while True:
            if not self._queue:
                if self._closed:
                    return
                self._ready.clear()
                await self._ready.wait()
                continue
            delay = self.limiter.wait()
            if delay > 0:
                self.stats.throttled += 1
                await self._sleep(delay)
                continue
            await self.send_one()

    async def send_one(self) -> Result:
        """Compose one message from the head of the queue and send it now (the caller kept to the rate)."""
        message = compose(list(self._queue), self.robot.kind.dialect)
        for _ in message.notifications:
            self._queue.popleft()
        self.stats.queued = len(self._queue)
        url, body = self.robot.request(message, self._wall())
        self.limiter.record()
        try:
            status, headers, answer = await self._transport(url, body)
            result = self.robot.classify(status, headers, answer)
        except SendFailed as exc:
            result = Result(RETRY, str(exc))
        self.stats.attempts[result.outcome] += 1
        count = len(message.notifications)
        name = self.robot.kind.label
        if result.outcome == OK:
            self.stats.messages_sent += 1
            self.stats.notifications_delivered += count
            log.info("%s: sent %r (%d notification(s), %d bytes)", name, message.title, count, len(body))
        elif result.outcome == REFUSED:
            self._drop(count, "refused")
            log.warning("%s refused %r: %s; %d notification(s) dropped", name, message.title, result.detail, count)
        else:
            self._retry(message.notifications, result)
        return result

    def _retry(self, notifications: tuple[Notification, ...], result: Result) -> None:
        attempts = max(n.attempts for n in notifications) + 1
        name = self.robot.kind.label
        what = "said too frequent" if result.outcome == RATE_LIMITED else "failed"
        if attempts >= self._max_attempts:
            self._drop(len(notifications), "gave_up")
            log.warning("%s %s (%s) at attempt %d: %d notification(s) dropped", name, what, result.detail,
                        attempts, len(notifications))  # fmt: skip
            return
        queued_keys = {n.group_key for n in self._queue if n.group_key}
        # A notification whose group was queued again meanwhile is out of date: the newer one goes instead.
        back = [dataclasses.replace(n, attempts=attempts) for n in notifications if n.group_key not in queued_keys]
        self.stats.superseded += len(notifications) - len(back)
        self._queue.extendleft(reversed(back))
        while len(self._queue) > self._capacity:
            self._queue.pop()
            self._drop(1, "queue_full")
        self.stats.queued = len(self._queue)
        delay = self.backoff.delay(attempts, result.retry_after)
        self.limiter.pause(delay)
        log.warning("%s %s (%s): retrying in %.0fs (attempt %d of %d)", name, what, result.detail, delay,
                    attempts + 1, self._max_attempts)  # fmt: skip


__all__ = ["DROP_REASONS", "OK", "RETRY", "Outbox", "RobotStats", "SendFailed", "Transport"]
