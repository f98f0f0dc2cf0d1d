"""The relay's HTTP side: Alertmanager posts here; the relay's own health, counters and stats.

- POST to the path of ``alerting.relay_url`` (default ``/alerts``): Alertmanager's webhook (JSON v4). 200 once
  queued for every robot; 400 not a v4 payload, 413 over ``MAX_BODY_BYTES``, 415 not JSON, 408 a body too slow,
  503 while stopping (Alertmanager retries).
- GET ``/-/health``: 200 ``ok``; 503 ``stopping`` once a stop began.
- GET ``/metrics``: the counters in Prometheus' text format (``tokenlat_relay_*``); GET ``/-/stats``: as JSON.

Everything the network sends is bounded: the body's size, the time to read it (``READ_TIMEOUT``), what is read of it
(alerts.py). Requests to the robots are bounded by ``SEND_TIMEOUT`` and read ``MAX_RESPONSE_BYTES`` of the answer.
Log lines pass through :class:`Redactor`, which replaces every robot URL, token and secret by ``***``: a library's
error message that quotes a URL cannot leak one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from tokenlat_cli.relay.alerts import MAX_BODY_BYTES, InvalidPayload, parse_notification
from tokenlat_cli.relay.outbox import DROP_REASONS, Outbox, SendFailed
from tokenlat_cli.relay.ratelimit import Backoff
from tokenlat_cli.relay.robots import MAX_RESPONSE_BYTES, OUTCOMES, Robot

log = logging.getLogger("tokenlat.relay")

LISTENING_NAME = "tokenlat alert-relay"
#: Seconds a client has to send its request body.
READ_TIMEOUT = 10.0
#: Seconds one request to a robot may take, connecting included.
SEND_TIMEOUT = 10.0
REJECT_REASONS = ("invalid", "too_large", "not_json", "timeout", "stopping")


class Redactor(logging.Filter):
    """Replaces every secret in a log record's message (arguments included) with ``***``."""

    def __init__(self, secrets: Sequence[str]) -> None:
        super().__init__()
        ordered = sorted({s for s in secrets if s}, key=len, reverse=True)  # a URL before the token inside it
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered)) if ordered else None

    def redact(self, text: str) -> str:
        return self._pattern.sub("***", text) if self._pattern else text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._pattern is not None:
            record.msg = self.redact(record.getMessage())
            record.args = None
            if record.exc_info:  # a traceback may quote a URL: keep its last line only, redacted
                exc = record.exc_info[1]
                record.msg += f" ({type(exc).__name__}: {self.redact(str(exc))})"
                record.exc_info = None
                record.exc_text = None
        return True


class AiohttpTransport:
    """POSTs JSON with one shared session, bounded in time and in what it reads back; proxies from the
    environment apply (HTTPS_PROXY), as robots are often reached through one."""

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None

    async def __call__(self, url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=SEND_TIMEOUT, sock_connect=SEND_TIMEOUT / 2)
            self._session = aiohttp.ClientSession(timeout=timeout, trust_env=True)
        try:
            async with self._session.post(
                url, data=body, headers={"Content-Type": "application/json; charset=utf-8"}, allow_redirects=False
            ) as response:
                answer = await response.content.read(MAX_RESPONSE_BYTES)
                return response.status, dict(response.headers), answer
        except asyncio.TimeoutError:
            raise SendFailed(f"no answer within {SEND_TIMEOUT:g}s") from None
        except aiohttp.ClientError as exc:
            # The class name only: aiohttp's messages quote the host and sometimes the URL.
            raise SendFailed(f"request failed ({type(exc).__name__})") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class Relay:
    def __init__(
        self,
        robots: Sequence[Robot],
        path: str = "/alerts",
        queue_size: int = 100,
        max_attempts: int = 6,
        backoff: Backoff | None = None,
        transport: Any = None,
    ) -> None:
        self.path = path
        self.transport = transport or AiohttpTransport()
        self.outboxes = [Outbox(r, self.transport, queue_size, max_attempts, backoff) for r in robots]
        self.received = 0
        self.rejected: Counter[str] = Counter()
        self.stopping = False
        self.started = time.time()
        self._tasks: list[asyncio.Task[None]] = []
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(self.path, self.alerts)
        app.router.add_get("/-/health", self.health)
        app.router.add_get("/-/stats", self.stats_json)
        app.router.add_get("/metrics", self.metrics)
        return app

    async def start(self, host: str, port: int) -> int:
        """Serve on ``host:port`` (0: a free port) and start the senders; the port bound."""
        from tokenlat import listening

        sock = listening.bind(host, port)
        self._runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.SockSite(self._runner, sock).start()
        self._tasks = [asyncio.create_task(o.run()) for o in self.outboxes]
        return int(sock.getsockname()[1])

    async def drain(self, timeout: float) -> None:
        """Stop taking alerts, send what is queued within ``timeout`` seconds, drop (and count) the rest."""
        self.stopping = True
        for outbox in self.outboxes:
            outbox.close()
        if self._tasks:
            _, pending = await asyncio.wait(self._tasks, timeout=timeout)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        for outbox in self.outboxes:
            left = outbox.abandon()
            if left:
                log.warning("%s: %d notification(s) not sent before the stop", outbox.robot.kind.label, left)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        close = getattr(self.transport, "close", None)
        if close is not None:
            await close()

    # -- handlers

    def _reject(self, reason: str, status: int, text: str) -> web.Response:
        self.rejected[reason] += 1
        log.warning("refused a request: %s", text)
        return web.Response(status=status, text=text + "\n")

    async def alerts(self, request: web.Request) -> web.Response:
        if self.stopping:
            return self._reject("stopping", 503, "stopping")
        if request.content_type != "application/json":
            return self._reject("not_json", 415, "expected application/json")
        try:
            body = await asyncio.wait_for(request.read(), READ_TIMEOUT)
        except web.HTTPRequestEntityTooLarge:
            return self._reject("too_large", 413, f"body over {MAX_BODY_BYTES} bytes")
        except asyncio.TimeoutError:
            return self._reject("timeout", 408, f"body not read within {READ_TIMEOUT:g}s")
        try:
            notification = parse_notification(body)
        except InvalidPayload as exc:
            return self._reject("invalid", 400, f"not an Alertmanager webhook payload: {exc}")
        self.received += 1
        log.info("received %s (%d alert(s))", notification.title, len(notification.alerts))
        for outbox in self.outboxes:
            outbox.put(notification)
        return web.Response(text="queued\n")

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=503 if self.stopping else 200, text="stopping\n" if self.stopping else "ok\n")

    def stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "rejected": {r: self.rejected[r] for r in REJECT_REASONS},
            "stopping": self.stopping,
            "uptime_seconds": round(time.time() - self.started, 3),
            "robots": {o.robot.name: {**o.stats.as_dict(), "queued": o.pending} for o in self.outboxes},
        }

    async def stats_json(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(text=self.metrics_text(), content_type="text/plain", charset="utf-8")

    def metrics_text(self) -> str:
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP tokenlat_relay_{name} {help_text}")
            lines.append(f"# TYPE tokenlat_relay_{name} {kind}")
            lines.extend(f"tokenlat_relay_{name}{labels} {value:g}" for labels, value in samples)

        robots = [(f'robot="{o.robot.name}"', o) for o in self.outboxes]
        family("notifications_received_total", "counter", "Alertmanager notifications accepted.", [("", self.received)])
        rejected = [(f'{{reason="{r}"}}', float(self.rejected[r])) for r in REJECT_REASONS]
        family("requests_rejected_total", "counter", "Requests refused, by reason.", rejected)
        for name, kind, help_text, attribute in _PER_ROBOT:
            family(name, kind, help_text, [(f"{{{r}}}", float(getattr(o.stats, attribute))) for r, o in robots])
        attempts = [(f'{{{r},outcome="{k}"}}', float(o.stats.attempts[k])) for r, o in robots for k in OUTCOMES]
        family("send_attempts_total", "counter", "Requests to a robot, by outcome.", attempts)
        dropped = [(f'{{{r},reason="{k}"}}', float(o.stats.dropped[k])) for r, o in robots for k in DROP_REASONS]
        family("notifications_dropped_total", "counter", "Notifications never delivered, by reason.", dropped)
        return "\n".join(lines) + "\n"


#: Per-robot families: name, type, help, RobotStats attribute.
_PER_ROBOT = (
    ("queued", "gauge", "Notifications waiting for their robot.", "queued"),
    ("queue_capacity", "gauge", "Notifications a robot's queue holds.", "capacity"),
    ("messages_sent_total", "counter", "Messages a robot accepted.", "messages_sent"),
    ("notifications_delivered_total", "counter", "Notifications in accepted messages.", "notifications_delivered"),
    ("notifications_superseded_total", "counter", "Queued notifications replaced by a newer one.", "superseded"),
    ("throttled_total", "counter", "Sends that waited for the robot's rate limit.", "throttled"),
)
