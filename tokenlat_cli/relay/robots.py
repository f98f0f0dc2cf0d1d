"""The three robots: where a message goes, how it is signed and shaped, and what each answer means.

- DingTalk: POST the webhook with ``&timestamp=..&sign=..`` (HMAC-SHA256 in the query), body
  ``{"msgtype": "markdown", "markdown": {"title", "text"}}``; "too frequent" is errcode 130101 or 410100.
- Feishu/Lark: POST the webhook, body ``{"timestamp", "sign", "msg_type": "interactive", "card"}`` (HMAC-SHA256
  in the body); "too frequent" is code 11232 or 9499.
- WeCom group robot: POST the webhook (its ``key=`` is the secret; no signing), body
  ``{"msgtype": "markdown", "markdown": {"content"}}``; "too frequent" is errcode 45009.

HTTP 429 is "too frequent" from every robot (its Retry-After is honoured); a 5xx, a 408 or a network error is worth
another try; anything else (a bad signature, a keyword the robot requires, a body it refuses) is not, and the
message is dropped and counted. The webhook URLs hold the robots' tokens: they come from the environment (the
variables the profile's ``alerting`` section names) and appear in no log line and no counter.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from tokenlat_cli.relay import signing
from tokenlat_cli.relay.messages import DINGTALK, FEISHU, WECOM, Dialect, Message
from tokenlat_cli.relay.ratelimit import Window

#: Bytes of a robot's answer read at most.
MAX_RESPONSE_BYTES = 64 * 1024
#: Longest Retry-After honoured (seconds).
MAX_RETRY_AFTER = 300.0

OK, RATE_LIMITED, RETRY, REFUSED = "ok", "rate_limited", "retry", "refused"
OUTCOMES = (OK, RATE_LIMITED, RETRY, REFUSED)


class RobotConfigError(ValueError):
    """A robot the profile names that cannot be used: the message names the variable, never its value."""


@dataclass(frozen=True)
class Result:
    outcome: str
    detail: str  # status and the robot's code and message: never the URL
    retry_after: float | None = None


@dataclass(frozen=True)
class RobotKind:
    name: str  # also names the profile's fields: alerting.<name>_webhook_env, <name>_secret_env
    label: str
    dialect: Dialect
    windows: tuple[Window, ...]
    rate_limited_codes: frozenset[int]
    body: Callable[[Robot, Message, float], dict[str, Any]] = field(repr=False)
    url: Callable[[Robot, float], str] = field(repr=False, default=lambda robot, now: robot.webhook)
    signed: bool = True
    code_fields: tuple[str, ...] = ("errcode",)  # where the answer's code is
    message_fields: tuple[str, ...] = ("errmsg",)
    retry_codes: frozenset[int] = frozenset({-1})  # the robot's own "busy, try again"

    @property
    def webhook_env(self) -> str:
        return f"{self.name}_webhook_env"

    @property
    def secret_env(self) -> str | None:
        return f"{self.name}_secret_env" if self.signed else None


def _dingtalk_url(robot: Robot, now: float) -> str:
    if not robot.secret:
        return robot.webhook
    separator = "&" if urlsplit(robot.webhook).query else "?"
    return f"{robot.webhook}{separator}{signing.dingtalk_query(robot.secret, int(now * 1000))}"


def _dingtalk_body(robot: Robot, message: Message, now: float) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"title": message.title, "text": message.text}}


def _feishu_body(robot: Robot, message: Message, now: float) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if robot.secret:
        timestamp = int(now)
        body.update(timestamp=str(timestamp), sign=signing.feishu_sign(robot.secret, timestamp))
    body.update(
        msg_type="interactive",
        card={
            "config": {"wide_screen_mode": True},
            "header": {
                "title": {"tag": "plain_text", "content": message.title},
                "template": "red" if message.status == "firing" else "green",
            },
            "elements": [{"tag": "markdown", "content": message.text}],
        },
    )
    return body


def _wecom_body(robot: Robot, message: Message, now: float) -> dict[str, Any]:
    return {"msgtype": "markdown", "markdown": {"content": message.text}}


DINGTALK_ROBOT = RobotKind(
    "dingtalk", "DingTalk", DINGTALK, (Window(20, 60.0),), frozenset({130101, 410100}), _dingtalk_body, _dingtalk_url
)
FEISHU_ROBOT = RobotKind(
    "feishu", "Feishu/Lark", FEISHU, (Window(5, 1.0), Window(100, 60.0)), frozenset({11232, 9499}), _feishu_body,
    code_fields=("code", "StatusCode"), message_fields=("msg", "StatusMessage"), retry_codes=frozenset({2200}),
)  # fmt: skip
WECOM_ROBOT = RobotKind("wecom", "WeCom", WECOM, (Window(20, 60.0),), frozenset({45009}), _wecom_body, signed=False)
KINDS = (DINGTALK_ROBOT, FEISHU_ROBOT, WECOM_ROBOT)


@dataclass(frozen=True)
class Robot:
    kind: RobotKind
    webhook: str = field(repr=False)
    secret: str = field(default="", repr=False)

    @property
    def name(self) -> str:
        return self.kind.name

    def request(self, message: Message, now: float | None = None) -> tuple[str, bytes]:
        """URL and JSON body of ``message``, signed for wall-clock time ``now`` (default: the time now)."""
        now = time.time() if now is None else now
        body = json.dumps(self.kind.body(self, message, now), ensure_ascii=False, separators=(",", ":"))
        return self.kind.url(self, now), body.encode()

    def secrets(self) -> list[str]:
        """Every string of this robot that must never be shown: the URL, its token parts and the secret."""
        parts = urlsplit(self.webhook)
        found = [self.webhook, self.secret, parts.path.rsplit("/", 1)[-1]]
        found += [value for _, value in parse_qsl(parts.query)]
        return [s for s in found if len(s) >= 4]

    def classify(self, status: int, headers: Mapping[str, str], body: bytes) -> Result:
        if status == 429:
            return Result(RATE_LIMITED, "HTTP 429", _retry_after(headers.get("Retry-After")))
        if status >= 500 or status == 408:
            return Result(RETRY, f"HTTP {status}")
        try:
            answer = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            answer = None
        if not isinstance(answer, dict):
            return Result(RETRY if 200 <= status < 300 else REFUSED, f"HTTP {status}, not a JSON object")
        code = next((answer[f] for f in self.kind.code_fields if f in answer), None)
        text = next((str(answer[f])[:200] for f in self.kind.message_fields if f in answer), "")
        detail = f"HTTP {status}, code {code!r}{f' ({text})' if text else ''}"
        if not 200 <= status < 300:
            return Result(REFUSED, detail)
        if code == 0:
            return Result(OK, detail)
        if code in self.kind.rate_limited_codes:
            return Result(RATE_LIMITED, detail)
        if code in self.kind.retry_codes:
            return Result(RETRY, detail)
        return Result(REFUSED, detail)


def _retry_after(value: str | None) -> float | None:
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP date: the backoff decides
    if seconds is None or not seconds >= 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _valid_webhook(value: str) -> bool:
    try:
        parts = urlsplit(value)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and not any(c.isspace() for c in value)


def load_robots(alerting: Mapping[str, Any], environ: Mapping[str, str]) -> list[Robot]:
    """The robots the profile's ``alerting`` section names, with their URLs and secrets from ``environ``.

    A robot is used when its webhook variable is named; a named variable that is unset or empty, or a webhook
    that is not an http(s) URL, is a RobotConfigError naming the variable (never its value).
    """
    robots = []
    for kind in KINDS:
        webhook_var = alerting.get(kind.webhook_env) or ""
        secret_var = alerting.get(kind.secret_env) or "" if kind.secret_env else ""
        if not webhook_var:
            if secret_var:
                raise RobotConfigError(f"alerting.{kind.secret_env} is set but alerting.{kind.webhook_env} is not")
            continue
        webhook = environ.get(webhook_var, "")
        if not webhook:
            raise RobotConfigError(f"{webhook_var} (alerting.{kind.webhook_env}) is not set in the environment")
        if not _valid_webhook(webhook):
            raise RobotConfigError(f"{webhook_var} (alerting.{kind.webhook_env}) is not an http(s) URL")
        secret = ""
        if secret_var:
            secret = environ.get(secret_var, "")
            if not secret:
                raise RobotConfigError(f"{secret_var} (alerting.{kind.secret_env}) is not set in the environment")
        robots.append(Robot(kind, webhook, secret))
    return robots
