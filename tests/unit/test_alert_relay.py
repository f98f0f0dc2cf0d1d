"""`tokenlat alert-relay` without a network to the robots: signing against known vectors, the rate limits and the
queue on a fake clock (no timed asserts), what each robot gets, and that no secret reaches a log line or a counter.
The whole path (Prometheus, Alertmanager, the relay, the robots) is tests/e2e/test_alert_relay.py."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import DATA
from tests.robots import Robots, stand_ins
from tokenlat_cli.commands import alert_relay as command
from tokenlat_cli.main import cli
from tokenlat_cli.operate import alertmanager
from tokenlat_cli.operate.rules import render as render_rules
from tokenlat_cli.profiles import load_profile
from tokenlat_cli.relay import signing
from tokenlat_cli.relay.alerts import MAX_ALERTS, InvalidPayload, Notification, parse_notification
from tokenlat_cli.relay.messages import DIALECTS, WECOM, compose
from tokenlat_cli.relay.outbox import Outbox, SendFailed
from tokenlat_cli.relay.ratelimit import Backoff, RateLimiter, Window
from tokenlat_cli.relay.robots import (
    DINGTALK_ROBOT,
    FEISHU_ROBOT,
    KINDS,
    WECOM_ROBOT,
    Robot,
    RobotConfigError,
    load_robots,
)
from tokenlat_cli.relay.server import Redactor, Relay

# Computed with openssl, not Python: printf '1700000000000\n%s' "$S" | openssl dgst -sha256 -hmac "$S" -binary | base64
DINGTALK_SECRET = "SEC0123456789abcdef0123456789abcdef0123456789abcdef0123456789ab"
DINGTALK_VECTOR = "tnIJJgshG0BPUVcy7l6X8vjNKt/qD9CgBEiifXvZ9ic="
# printf '' | openssl dgst -sha256 -hmac "$(printf '1700000000\nfeishu-secret-XYZ')" -binary | base64
FEISHU_VECTOR = "o1KBpJTznX8C4fxbt8J7Da9Mp4a6EeqmnxCnoApf2vI="


def payload(status: str = "firing", name: str = "TokenlatTTFTHigh", group: str = "g1", alerts: int = 1,
            **extra: Any) -> dict[str, Any]:  # fmt: skip
    return {
        "version": "4",
        "status": status,
        "receiver": "tokenlat-relay",
        "groupKey": group,
        "groupLabels": {"alertname": name},
        "commonLabels": {"alertname": name, "severity": "page"},
        "commonAnnotations": {"summary": f"{name} summary"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": status,
                "labels": {"alertname": name, "severity": "page", "gen_ai_request_model": f"model-{i}"},
                "annotations": {"summary": f"TTFT p95 of model-{i} above 2s"},
                "startsAt": "2026-01-01T00:00:00Z",
                "endsAt": "2026-01-01T00:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
                "generatorURL": "http://prometheus:9090/graph",
                "fingerprint": f"{i:016x}",
            }
            for i in range(alerts)
        ],
        **extra,
    }


def notification(**kwargs: Any) -> Notification:
    return parse_notification(json.dumps(payload(**kwargs)).encode())


# -- signing ---------------------------------------------------------------------------------------------------------


def test_dingtalk_signature_matches_a_vector_computed_with_openssl() -> None:
    assert signing.dingtalk_sign(DINGTALK_SECRET, 1700000000000) == DINGTALK_VECTOR
    query = parse_qs(signing.dingtalk_query(DINGTALK_SECRET, 1700000000000))
    assert query == {"timestamp": ["1700000000000"], "sign": [DINGTALK_VECTOR]}  # URL-encoded: + and / survive
    assert "+" not in signing.dingtalk_query(DINGTALK_SECRET, 1700000000000).split("sign=")[1].replace("%2B", "")


def test_feishu_signature_matches_a_vector_computed_with_openssl() -> None:
    assert signing.feishu_sign("feishu-secret-XYZ", 1700000000) == FEISHU_VECTOR


def test_signed_requests_carry_the_signature_where_each_robot_reads_it() -> None:
    message = compose([notification()], DIALECTS["dingtalk"])
    url, _ = Robot(DINGTALK_ROBOT, "https://oapi.dingtalk.com/robot/send?access_token=T", DINGTALK_SECRET).request(
        message, 1700000000.0
    )
    query = parse_qs(urlsplit(url).query)
    assert query == {"access_token": ["T"], "timestamp": ["1700000000000"], "sign": [DINGTALK_VECTOR]}
    _, body = Robot(FEISHU_ROBOT, "https://open.feishu.cn/open-apis/bot/v2/hook/H", "feishu-secret-XYZ").request(
        compose([notification()], DIALECTS["feishu"]), 1700000000.9
    )
    sent = json.loads(body)
    assert (sent["timestamp"], sent["sign"], sent["msg_type"]) == ("1700000000", FEISHU_VECTOR, "interactive")


# -- rate limits, on a fake clock -----------------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def test_rate_limiter_keeps_every_window() -> None:
    clock = FakeClock()
    limiter = RateLimiter((Window(5, 1.0), Window(100, 60.0)), clock)
    sent = []
    while len(sent) < 230:
        wait = limiter.wait()
        if wait:
            clock.now += wait
            continue
        limiter.record()
        sent.append(clock.now)
    for limit, seconds in ((5, 1.0), (100, 60.0)):
        assert all(sent[i + limit] - sent[i] >= seconds for i in range(len(sent) - limit))
    assert sent[5] - sent[0] == pytest.approx(1.0) and sent[100] - sent[0] == pytest.approx(60.0)  # no slower either


def test_a_pause_holds_back_every_send() -> None:
    clock = FakeClock()
    limiter = RateLimiter((Window(20, 60.0),), clock)
    assert limiter.wait() == 0
    limiter.pause(8)
    assert limiter.wait() == pytest.approx(8)
    clock.now += 8
    assert limiter.wait() == 0


def test_backoff_doubles_and_honours_retry_after() -> None:
    backoff = Backoff(first=2, longest=60)
    assert [backoff.delay(n) for n in (1, 2, 3, 6, 7)] == [2, 4, 8, 60, 60]
    assert backoff.delay(1, retry_after=30) == 30 and backoff.delay(1, retry_after=999) == 60


class FakeRobot:
    """A transport that answers like a robot: from a script of answers, then OK."""

    def __init__(self, clock: FakeClock, script: list[Any] | None = None) -> None:
        self.clock = clock
        self.script = list(script or [])
        self.sent: list[tuple[float, dict[str, Any]]] = []

    async def __call__(self, url: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
        self.sent.append((self.clock.now, json.loads(body)))
        answer = self.script.pop(0) if self.script else (200, {}, {"errcode": 0, "code": 0})
        if isinstance(answer, Exception):
            raise answer
        status, headers, data = answer
        return status, headers, json.dumps(data).encode()


def run_outbox(outbox: Outbox) -> None:
    async def main() -> None:
        outbox.close()
        await outbox.run()

    asyncio.run(main())


def make_outbox(kind: Any, script: list[Any] | None = None, capacity: int = 100, attempts: int = 6,
                webhook: str = "https://robot.example/send?key=k") -> tuple[Outbox, FakeRobot, FakeClock]:  # fmt: skip
    clock = FakeClock()
    transport = FakeRobot(clock, script)
    outbox = Outbox(Robot(kind, webhook, "s"), transport, capacity, attempts, Backoff(2, 60), clock, clock.sleep,
                    wall=lambda: 1700000000.0)  # fmt: skip
    return outbox, transport, clock


def test_a_burst_is_coalesced_and_sent_within_the_robots_rate() -> None:
    outbox, robot, _ = make_outbox(WECOM_ROBOT)
    for i in range(100):
        outbox.put(notification(group=f"group-{i}", name=f"Alert{i}"))
    run_outbox(outbox)
    times = [t for t, _ in robot.sent]
    assert all(times[i + 20] - times[i] >= 60 for i in range(len(times) - 20))
    assert len(robot.sent) < 100  # several groups a message
    shown = "".join(body["markdown"]["content"] for _, body in robot.sent)
    assert all(f"Alert{i}" in shown for i in range(100))
    assert all(len(body["markdown"]["content"].encode()) <= 4096 for _, body in robot.sent)
    assert outbox.stats.notifications_delivered == 100 and outbox.stats.messages_sent == len(robot.sent)


def test_more_than_the_robots_rate_waits_instead_of_being_refused() -> None:
    outbox, robot, _ = make_outbox(DINGTALK_ROBOT)
    for i in range(60):  # one at a time: each message is sent before the next arrives
        outbox.put(notification(group=f"g{i}", alerts=MAX_ALERTS))
        asyncio.run(outbox.send_one()) if outbox.limiter.wait() == 0 else None
    run_outbox(outbox)
    times = [t for t, _ in robot.sent]
    assert all(times[i + 20] - times[i] >= 60 for i in range(len(times) - 20))
    assert outbox.stats.throttled > 0 and outbox.stats.notifications_delivered == 60


def test_a_newer_notification_of_a_queued_group_replaces_it() -> None:
    outbox, robot, _ = make_outbox(DINGTALK_ROBOT)
    outbox.put(notification(group="g", status="firing"))
    outbox.put(notification(group="other", name="Other"))
    outbox.put(notification(group="g", status="resolved"))
    assert outbox.pending == 2 and outbox.stats.superseded == 1
    run_outbox(outbox)
    text = robot.sent[0][1]["markdown"]["text"]
    assert "[RESOLVED] TokenlatTTFTHigh" in text and text.count("[FIRING") == 1 and "[FIRING:1] Other" in text


def test_the_queue_is_bounded_and_drops_the_oldest() -> None:
    outbox, robot, _ = make_outbox(DINGTALK_ROBOT, capacity=3)
    for i in range(5):
        outbox.put(notification(group=f"g{i}", name=f"Alert{i}"))
    assert outbox.pending == 3 and outbox.stats.dropped["queue_full"] == 2
    run_outbox(outbox)
    text = robot.sent[0][1]["markdown"]["text"]
    assert "Alert0" not in text and "Alert1" not in text and "Alert4" in text


def test_too_frequent_is_retried_after_a_backoff_and_coalesced_with_what_came_meanwhile() -> None:
    too_fast = (200, {}, {"errcode": 130101, "errmsg": "send too fast"})
    outbox, robot, _ = make_outbox(DINGTALK_ROBOT, script=[too_fast, too_fast])

    async def main() -> None:
        outbox.put(notification(group="a", name="First"))
        await outbox.send_one()  # too fast: back in the queue, robot paused 2 s
        outbox.put(notification(group="b", name="Second"))
        outbox.close()
        await outbox.run()

    asyncio.run(main())
    times = [t for t, _ in robot.sent]
    assert times[1] - times[0] == pytest.approx(2) and times[2] - times[1] == pytest.approx(4)
    last = robot.sent[-1][1]["markdown"]["text"]
    assert "First" in last and "Second" in last and len(robot.sent) == 3
    assert outbox.stats.attempts["rate_limited"] == 2 and outbox.stats.attempts["ok"] == 1


def test_http_429_waits_for_retry_after_and_network_errors_are_retried() -> None:
    script = [(429, {"Retry-After": "17"}, {}), SendFailed("request failed (ClientConnectorError)"), (503, {}, {})]
    outbox, robot, _ = make_outbox(FEISHU_ROBOT, script=script)
    outbox.put(notification())
    run_outbox(outbox)
    times = [t for t, _ in robot.sent]
    assert [round(b - a) for a, b in itertools.pairwise(times)] == [17, 4, 8]
    assert outbox.stats.notifications_delivered == 1


def test_after_max_attempts_the_notifications_are_dropped_and_counted() -> None:
    outbox, robot, _ = make_outbox(WECOM_ROBOT, script=[(500, {}, {})] * 10, attempts=3)
    outbox.put(notification())
    run_outbox(outbox)
    assert len(robot.sent) == 3 and outbox.stats.dropped["gave_up"] == 1 and outbox.pending == 0


def test_a_refusal_is_not_retried() -> None:
    outbox, robot, _ = make_outbox(DINGTALK_ROBOT, script=[(200, {}, {"errcode": 310000, "errmsg": "sign not match"})])
    outbox.put(notification())
    run_outbox(outbox)
    assert len(robot.sent) == 1 and outbox.stats.dropped["refused"] == 1


# -- what the robots get ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.name)
def test_each_robot_gets_its_own_shape(kind: Any) -> None:
    message = compose([notification(alerts=2)], kind.dialect)
    _, raw = Robot(kind, "https://robot.example/hook/x?key=k", "s").request(message, 1700000000.0)
    body = json.loads(raw)
    if kind.name == "feishu":
        assert body["card"]["header"] == {"title": {"tag": "plain_text", "content": "[FIRING:2] TokenlatTTFTHigh"},
                                          "template": "red"}  # fmt: skip
        text = body["card"]["elements"][0]["content"]
    else:
        assert body["msgtype"] == "markdown"
        text = body["markdown"]["text" if kind.name == "dingtalk" else "content"]
    assert "TokenlatTTFTHigh" in text and "model-0" in text and "model-1" in text
    assert "TTFT p95 of model-1 above 2s" in text and "[source](http://prometheus:9090/graph)" in text


def test_resolved_is_green_and_says_when() -> None:
    message = compose([notification(status="resolved")], WECOM)
    assert message.title == "[RESOLVED] TokenlatTTFTHigh" and message.status == "resolved"
    assert '<font color="info">' in message.text and "resolved 2026-01-01T00:05:00Z" in message.text


def test_a_notification_too_large_for_wecom_shows_fewer_alerts_and_says_so() -> None:
    big = notification(alerts=MAX_ALERTS)
    message = compose([big, notification(group="next")], WECOM)
    assert len(message.text.encode()) <= 4096 and message.notifications == (big,)
    assert "more alerts" in message.text


def test_payload_text_is_bounded_and_cleaned() -> None:
    raw = payload(alerts=MAX_ALERTS + 7)
    raw["alerts"][0]["annotations"]["summary"] = "x\x00\x1b[31m" + "y" * 5000
    parsed = parse_notification(json.dumps(raw).encode())
    assert len(parsed.alerts) == MAX_ALERTS and parsed.truncated == 7
    summary = parsed.alerts[0].annotations["summary"]
    assert len(summary) <= 1024 and "\x00" not in summary and "\x1b" not in summary


@pytest.mark.parametrize(
    "body",
    [b"not json", b"[]", json.dumps({**payload(), "version": "3"}).encode(), json.dumps(payload(alerts=0)).encode(),
     json.dumps({**payload(), "status": "weird"}).encode(), b"[" * 100000],
)  # fmt: skip
def test_what_is_not_a_v4_payload_is_refused(body: bytes) -> None:
    with pytest.raises(InvalidPayload):
        parse_notification(body)


# -- secrets ---------------------------------------------------------------------------------------------------------


@pytest.fixture
def captured_log() -> Iterator[io.StringIO]:
    stream = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield stream
    root.handlers[:] = handlers
    root.setLevel(level)


def test_no_secret_reaches_a_log_line_or_a_counter(captured_log: io.StringIO) -> None:
    """Every way a send can go wrong, logged as the command logs (tokenlat_cli.commands.alert_relay): a robot
    that refuses and echoes the URL it was called at, one that says too frequent, one that cannot be reached."""
    with Robots(stand_ins()) as robots:
        dingtalk, feishu, wecom = robots["dingtalk"], robots["feishu"], robots["wecom"]
        wecom.too_frequent_first = 100
        environ = {
            "DT_URL": robots.webhook("dingtalk"),
            "DT_SECRET": "wrong-" + dingtalk.secret,  # refused: sign not match
            "FS_URL": "http://127.0.0.1:9/open-apis/bot/v2/hook/" + feishu.token,  # nothing listens on port 9
            "FS_SECRET": feishu.secret,
            "WC_URL": robots.webhook("wecom"),
        }
        alerting = {
            "dingtalk_webhook_env": "DT_URL",
            "dingtalk_secret_env": "DT_SECRET",
            "feishu_webhook_env": "FS_URL",
            "feishu_secret_env": "FS_SECRET",
            "wecom_webhook_env": "WC_URL",
        }
        configured = load_robots(alerting, environ)
        command._logging(configured, captured_log)
        relay = Relay(configured, max_attempts=2, backoff=Backoff(0.01, 0.01))

        async def main() -> tuple[str, str]:
            import aiohttp

            port = await relay.start("127.0.0.1", 0)
            async with aiohttp.ClientSession() as session:
                await session.post(f"http://127.0.0.1:{port}/alerts", json=payload())
                await relay.drain(60)  # sends (and retries) everything, then stops
                stats = json.dumps(relay.stats())
                metrics = relay.metrics_text()
            await relay.close()
            return stats, metrics

        stats, metrics = asyncio.run(main())
        logging.getLogger("tokenlat.relay").error(
            "a library quoting %s", environ["WC_URL"], exc_info=ValueError(environ["DT_SECRET"])
        )
    log = captured_log.getvalue()
    assert "refused" in log and "too frequent" in log and "request failed" in log, log
    assert json.loads(stats)["robots"]["dingtalk"]["dropped"]["refused"] == 1
    secrets = [v for v in environ.values()] + [dingtalk.token, feishu.token, wecom.token, feishu.secret]
    for text in (log, stats, metrics):
        leaked = [s for s in secrets if s in text]
        assert not leaked, f"secret in output: {text}"


def test_redactor_hides_a_url_and_its_parts() -> None:
    redactor = Redactor(Robot(WECOM_ROBOT, "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd-1234").secrets())
    assert redactor.redact("POST https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=abcd-1234 failed") == (
        "POST *** failed"
    )
    assert redactor.redact("key abcd-1234 refused") == "key *** refused"


def test_robot_configuration_errors_name_the_variable_never_the_value() -> None:
    alerting = {"dingtalk_webhook_env": "DT_URL", "dingtalk_secret_env": "DT_SECRET"}
    with pytest.raises(RobotConfigError, match="DT_SECRET"):
        load_robots(alerting, {"DT_URL": "https://oapi.dingtalk.com/robot/send?access_token=zzzz"})
    with pytest.raises(RobotConfigError, match="DT_URL") as error:
        load_robots(alerting, {"DT_URL": "ftp://secret-host/zzzz", "DT_SECRET": "s"})
    assert "zzzz" not in str(error.value)


def test_the_command_refuses_a_profile_without_robots_or_variables(runner: CliRunner, tmp_path: Any) -> None:
    result = runner.invoke(cli, ["alert-relay", "--profile", "local"])
    assert result.exit_code == 2 and "names no robot" in result.output
    path = tmp_path / "p.yaml"
    path.write_text("extends: local\nalerting:\n  wecom_webhook_env: TOKENLAT_TEST_UNSET_WEBHOOK\n", encoding="utf-8")
    result = runner.invoke(cli, ["alert-relay", "--profile", str(path)], env={"TOKENLAT_TEST_UNSET_WEBHOOK": ""})
    assert result.exit_code == 2 and "TOKENLAT_TEST_UNSET_WEBHOOK" in result.output


# -- the Alertmanager config -----------------------------------------------------------------------------------------


def test_alertmanager_config_routes_everything_to_the_relay() -> None:
    profile = load_profile(str(DATA / "alerting.yaml"))
    config = yaml.safe_load(alertmanager.render(profile))
    route = config["route"]
    assert (route["group_wait"], route["group_interval"]) == ("1s", "2s") and "routes" not in route
    (receiver,) = config["receivers"]
    assert route["receiver"] == receiver["name"]
    assert receiver["webhook_configs"] == [
        {"url": profile.data["alerting"]["relay_url"], "send_resolved": True, "max_alerts": MAX_ALERTS}
    ]


def test_a_page_inhibits_the_ticket_of_the_same_alert() -> None:
    profile = load_profile("local")
    config = yaml.safe_load(alertmanager.render(profile))
    rules = yaml.safe_load(render_rules(profile))
    alerts = {r["alert"]: r["labels"]["severity"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for inhibit in config["inhibit_rules"]:
        sources = [m for m in inhibit["source_matchers"] if m.startswith("alertname=")]
        targets = [m for m in inhibit["target_matchers"] if m.startswith("alertname=")]
        for source, target in zip(sources, targets, strict=True):  # named pairs: a page and a ticket of the rules
            assert alerts[source.split('"')[1]] == "page" and alerts[target.split('"')[1]] == "ticket"
    assert any(i["source_matchers"] == ['severity="page"'] and i["target_matchers"] == ['severity="ticket"']
               and "alertname" in i["equal"] for i in config["inhibit_rules"])  # fmt: skip


def test_the_relay_refuses_what_is_not_a_bounded_v4_payload_and_reports_itself() -> None:
    import aiohttp

    from tokenlat_cli.relay.alerts import MAX_BODY_BYTES

    clock = FakeClock()
    relay = Relay([Robot(WECOM_ROBOT, "https://robot.example/send?key=k")], transport=FakeRobot(clock))

    async def main() -> list[int]:
        port = await relay.start("127.0.0.1", 0)
        url = f"http://127.0.0.1:{port}"
        statuses = []
        async with aiohttp.ClientSession() as session:
            for data, content_type in (
                (json.dumps(payload()), "application/json"),
                (b"x" * (MAX_BODY_BYTES + 1), "application/json"),
                (b"{}", "text/plain"),
                (b"{}", "application/json"),
            ):
                async with session.post(f"{url}/alerts", data=data, headers={"Content-Type": content_type}) as r:
                    statuses.append(r.status)
            async with session.get(f"{url}/-/health") as r:
                statuses.append(r.status)
            await relay.drain(10)
            async with session.get(f"{url}/-/health") as r:
                statuses.append(r.status)
            async with session.post(f"{url}/alerts", json=payload()) as r:
                statuses.append(r.status)
        await relay.close()
        return statuses

    assert asyncio.run(main()) == [200, 413, 415, 400, 200, 503, 503]
    stats = relay.stats()
    assert stats["received"] == 1 and stats["robots"]["wecom"]["notifications_delivered"] == 1
    assert stats["rejected"] == {"invalid": 1, "too_large": 1, "not_json": 1, "timeout": 0, "stopping": 1}
    assert 'tokenlat_relay_requests_rejected_total{reason="too_large"} 1' in relay.metrics_text()
