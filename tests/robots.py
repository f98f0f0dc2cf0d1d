"""Stand-ins for the chat robots the alert relay sends to: DingTalk, Feishu/Lark and WeCom group robots on local
HTTP servers, which check what the real ones check (signature, shape, size, rate) and can answer "too frequent".

The signatures are checked here with code of their own (not tokenlat_cli.relay.signing), from the robots'
documentation: DingTalk base64(HMAC-SHA256(secret, "{timestamp_ms}\\n{secret}")) in the query; Feishu
base64(HMAC-SHA256(key="{timestamp_s}\\n{secret}", msg="")) in the body. Whatever a robot would refuse is recorded
as a violation (and refused as the robot would), so a test asserts there are none.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Rate limits as the robots state them: (messages, seconds).
LIMITS = {"dingtalk": ((20, 60.0),), "feishu": ((5, 1.0), (100, 60.0)), "wecom": ((20, 60.0),)}
# What each answers when a message comes too soon: (HTTP status, JSON body, headers).
TOO_FREQUENT = {
    "dingtalk": (200, {"errcode": 130101, "errmsg": "send too fast, exceed 20 times per minute"}, {}),
    "feishu": (429, {"code": 11232, "msg": "frequency limited"}, {"Retry-After": "1"}),
    "wecom": (200, {"errcode": 45009, "errmsg": "api freq out of limit"}, {}),
}
OK = {
    "dingtalk": {"errcode": 0, "errmsg": "ok"},
    "feishu": {"code": 0, "msg": "success"},
    "wecom": {"errcode": 0, "errmsg": "ok"},
}
REFUSED = {
    "dingtalk": {"errcode": 310000, "errmsg": "sign not match"},
    "feishu": {"code": 19021, "msg": "sign match fail"},
    "wecom": {"errcode": 93000, "errmsg": "invalid webhook url"},
}


def _b64_hmac(key: str, message: str) -> str:
    return base64.b64encode(hmac.new(key.encode(), message.encode(), hashlib.sha256).digest()).decode()


@dataclass
class Received:
    at: float  # time.monotonic()
    title: str
    text: str
    body: dict[str, Any]


@dataclass
class StandIn:
    name: str
    token: str  # DingTalk's access_token, Feishu's hook id, WeCom's key
    secret: str = ""
    #: The first this many requests are answered "too frequent".
    too_frequent_first: int = 0
    accepted: list[Received] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # every request, answered or not
    violations: list[str] = field(default_factory=list)

    def path(self) -> str:
        return {"dingtalk": "/robot/send", "feishu": f"/open-apis/bot/v2/hook/{self.token}",
                "wecom": "/cgi-bin/webhook/send"}[self.name]  # fmt: skip

    def webhook(self, base: str) -> str:
        query = {"dingtalk": f"?access_token={self.token}", "feishu": "", "wecom": f"?key={self.token}"}[self.name]
        return base + self.path() + query

    def check(self, request: web.Request, body: Any) -> str | None:
        """What the real robot would refuse this request for, or None."""
        now = time.time()
        if not isinstance(body, dict):
            return "body is not a JSON object"
        if self.name == "dingtalk":
            query = request.query
            if query.get("access_token") != self.token:
                return "wrong access_token"
            if self.secret:
                timestamp, sign = query.get("timestamp", ""), query.get("sign", "")
                if not timestamp.isdigit() or abs(int(timestamp) / 1000 - now) > 3600:
                    return f"timestamp {timestamp!r} not within an hour"
                if sign != _b64_hmac(self.secret, f"{timestamp}\n{self.secret}"):
                    return "sign not match"
            markdown = body.get("markdown")
            if body.get("msgtype") != "markdown" or not isinstance(markdown, dict):
                return "not a markdown message"
            if not markdown.get("title") or not markdown.get("text"):
                return "markdown needs title and text"
        elif self.name == "feishu":
            if self.secret:
                timestamp, sign = str(body.get("timestamp", "")), body.get("sign", "")
                if not timestamp.isdigit() or abs(int(timestamp) - now) > 3600:
                    return f"timestamp {timestamp!r} not within an hour"
                if sign != _b64_hmac(f"{timestamp}\n{self.secret}", ""):
                    return "sign match fail"
            card = body.get("card")
            if body.get("msg_type") != "interactive" or not isinstance(card, dict):
                return "not an interactive card"
            if not card["header"]["title"]["content"] or not card["elements"][0]["content"]:
                return "empty card"
        else:
            if request.query.get("key") != self.token:
                return "wrong key"
            markdown = body.get("markdown")
            if body.get("msgtype") != "markdown" or not isinstance(markdown, dict) or not markdown.get("content"):
                return "not a markdown message"
            if len(markdown["content"].encode()) > 4096:
                return "40058: markdown content over 4096 bytes"
        return None

    def over_limit(self) -> list[str]:
        """Every window of the robot's stated limit that held more requests than it allows."""
        found = []
        for limit, seconds in LIMITS[self.name]:
            times = sorted(self.arrivals)
            for i in range(len(times) - limit):
                if times[i + limit] - times[i] < seconds:
                    found.append(
                        f"{limit + 1} requests within {times[i + limit] - times[i]:.2f}s (limit {limit}/{seconds:g}s)"
                    )
        return found

    @staticmethod
    def _title_text(name: str, body: dict[str, Any]) -> tuple[str, str]:
        if name == "dingtalk":
            return body["markdown"]["title"], body["markdown"]["text"]
        if name == "feishu":
            return body["card"]["header"]["title"]["content"], body["card"]["elements"][0]["content"]
        text = body["markdown"]["content"]
        return text.splitlines()[0], text

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        self.arrivals.append(time.monotonic())
        if len(raw) > 20 * 1024:
            self.violations.append(f"body of {len(raw)} bytes")
            return web.json_response(REFUSED[self.name])
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        problem = self.check(request, body)
        if problem:
            self.violations.append(problem)
            return web.json_response(REFUSED[self.name])
        if len(self.arrivals) <= self.too_frequent_first:
            status, answer, headers = TOO_FREQUENT[self.name]
            return web.json_response(answer, status=status, headers=headers)
        title, text = self._title_text(self.name, body)
        self.accepted.append(Received(time.monotonic(), title, text, body))
        return web.json_response(OK[self.name])

    def messages_about(self, alertname: str, status: str) -> list[Received]:
        """Messages saying that ``alertname``'s group is firing or resolved (the relay's titles: "[FIRING:2] Name",
        "[RESOLVED] Name")."""
        tag = re.compile(rf"\[{status.upper()}(:\d+)?\] {re.escape(alertname)}\b")
        return [r for r in self.accepted if tag.search(r.text)]


class Robots:
    """The three stand-ins on one local server, in a thread of their own (its own event loop)."""

    def __init__(self, stand_ins: list[StandIn]) -> None:
        self.stand_ins = {s.name: s for s in stand_ins}
        self.base = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="robot-stand-ins", daemon=True)
        self._runner: web.AppRunner | None = None

    def __getitem__(self, name: str) -> StandIn:
        return self.stand_ins[name]

    async def _start(self) -> str:
        app = web.Application()
        for stand_in in self.stand_ins.values():
            app.router.add_post(stand_in.path(), stand_in.handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    def __enter__(self) -> Robots:
        self._thread.start()
        self.base = asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._runner is not None:
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()

    def webhook(self, name: str) -> str:
        return self.stand_ins[name].webhook(self.base)

    def __iter__(self) -> Iterator[StandIn]:
        return iter(self.stand_ins.values())


def stand_ins(too_frequent_first: int = 0) -> list[StandIn]:
    """One stand-in of each robot, with tokens and secrets made up for the run."""
    import secrets

    return [
        StandIn("dingtalk", "dt" + secrets.token_hex(16), "SEC" + secrets.token_hex(24), too_frequent_first),
        StandIn("feishu", secrets.token_hex(16), secrets.token_urlsafe(18), too_frequent_first),
        StandIn("wecom", secrets.token_hex(16), "", too_frequent_first),
    ]
