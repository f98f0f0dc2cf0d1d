"""Alerts in the team's chat, end to end: a slow model breaches the TTFT SLO; the real Prometheus evaluates the
rendered rules (``render --what rules``) over what the real Collector delivers; the real Alertmanager, with the
rendered config (``render --what alertmanager``), routes to `tokenlat alert-relay`; local stand-ins of the DingTalk,
Feishu and WeCom robots (tests/robots.py) check signature, shape and rate, and answer "too frequent" once each.
Then the model recovers, and the resolved message arrives.

Alertmanager is Debian's prometheus-alertmanager (0.25), or $ALERTMANAGER_BIN and $AMTOOL_BIN; a missing one
fails the test.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import yaml

from tests.conftest import DATA
from tests.robots import Robots, stand_ins
from tokenlat import listening, semconv
from tokenlat.recorder import TokenMetrics
from tokenlat_cli.artefacts import render_artefact
from tokenlat_cli.binaries import find_binary
from tokenlat_cli.profiles import builtin_names, load_profile
from tokenlat_cli.relay.server import LISTENING_NAME
from tokenlat_cli.render import render_collector_config
from tokenlat_cli.verify.backends import start_backend
from tokenlat_cli.verify.certs import make_certificates
from tokenlat_cli.verify.load import run_load
from tokenlat_cli.verify.polling import WaitTimeout, wait_until
from tokenlat_cli.verify.processes import ProcessGroup, ServiceError, free_port, http_ok
from tokenlat_cli.verify.runner import VerifySettings, histogram_kind, local_deployment, service_telemetry
from tokenlat_cli.verify.services import (
    START_TIMEOUT,
    CollectorEndpoints,
    start_collector,
    start_listening,
    start_synthetic,
)
from tokenlat_cli.verify.synthetic import DEFAULT_MODEL

ALERT = "TokenlatTTFTHigh"
VARIABLES = {
    "dingtalk": ("TOKENLAT_TEST_DINGTALK_WEBHOOK", "TOKENLAT_TEST_DINGTALK_SECRET"),
    "feishu": ("TOKENLAT_TEST_FEISHU_WEBHOOK", "TOKENLAT_TEST_FEISHU_SECRET"),
    "wecom": ("TOKENLAT_TEST_WECOM_WEBHOOK", None),
}
#: The model: slow (TTFT 0.6 s, over the test profile's 0.25 s), then recovered; short answers either way.
SLOW = ["--ttft=fixed:0.6", "--inter-token=fixed:0.002", "--output-tokens=2-3"]
FAST = ["--ttft=fixed:0.002", "--inter-token=fixed:0.001", "--output-tokens=2-3"]
FIRING_TIMEOUT = 150.0
RESOLVED_TIMEOUT = 240.0


def _find(name: str, env_var: str, debian: str) -> Path:
    how = "apt-get install prometheus-alertmanager"
    try:
        return find_binary(name, env_var, how, ServiceError, [Path("/usr/bin") / debian])
    except ServiceError as exc:
        pytest.fail(f"end-to-end prerequisite missing: {exc}")


@pytest.fixture(scope="module")
def alertmanager_binary() -> Path:
    return _find("alertmanager", "ALERTMANAGER_BIN", "prometheus-alertmanager")


@pytest.fixture(scope="module")
def amtool_binary() -> Path:
    return _find("amtool", "AMTOOL_BIN", "amtool")


@pytest.mark.parametrize("name", [*builtin_names(), str(DATA / "alerting.yaml")])
def test_amtool_accepts_the_rendered_config(name: str, amtool_binary: Path, tmp_path: Path) -> None:
    import subprocess

    config = tmp_path / "alertmanager.yaml"
    config.write_text(render_artefact("alertmanager", load_profile(name)), encoding="utf-8")
    result = subprocess.run([str(amtool_binary), "check-config", str(config)], capture_output=True, text=True)
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr


def _load_until(
    url: str, metrics: TokenMetrics, concurrency: int, done: Callable[[], bool], timeout: float, what: str
) -> int:
    """Batches of streaming requests through the tokenlat instrumentation until ``done``; how many were sent."""
    attributes = {
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_PROVIDER_NAME: "tokenlat.synthetic",
        semconv.GEN_AI_REQUEST_MODEL: DEFAULT_MODEL,
    }

    async def load() -> int:
        deadline, sent, batch = time.monotonic() + timeout, 0, 0
        while not done():
            if time.monotonic() > deadline:
                raise WaitTimeout(what, timeout, f"{sent} requests sent")
            result = await run_load(url, concurrency * 2, concurrency, metrics, attributes, DEFAULT_MODEL, batch)
            assert not result.failures, result.failures[:3]
            sent, batch = sent + len(result.truths), batch + 1
        return sent

    return asyncio.run(load())


def test_a_slow_ttft_reaches_the_chat_robots_and_so_does_its_recovery(
    tmp_path: Path, collector_binary: Path, prometheus_binary: Path, alertmanager_binary: Path
) -> None:
    with Robots(stand_ins(too_frequent_first=1)) as robots, ProcessGroup() as group:
        certs = make_certificates(tmp_path / "certs")
        backend = start_backend(group, tmp_path, load_profile(str(DATA / "alerting.yaml")).data, certs)

        # The relay, as an operator runs it: the profile, and the robots' URLs and secrets in its environment.
        relay_port = free_port()
        raw = yaml.safe_load((DATA / "alerting.yaml").read_text(encoding="utf-8"))
        raw["alerting"]["relay_url"] = f"http://127.0.0.1:{relay_port}/alerts"
        profile_path = tmp_path / "profile.yaml"
        profile_path.write_text(yaml.safe_dump(raw), encoding="utf-8")
        relay_profile = load_profile(str(profile_path))
        env: dict[str, str] = {}
        for robot, (webhook_var, secret_var) in VARIABLES.items():
            env[webhook_var] = robots.webhook(robot)
            if secret_var:
                env[secret_var] = robots[robot].secret
        argv = [sys.executable, "-m", "tokenlat_cli", "alert-relay", "--profile", str(profile_path),
                "--listen", f"127.0.0.1:{relay_port}", "--drain-timeout", "10"]  # fmt: skip
        relay = start_listening(
            group, "alert relay", argv, tmp_path / "relay.log", listening.prefix(LISTENING_NAME), env
        )

        # Alertmanager with the rendered config, alone (no cluster).
        am_port = free_port()
        am_config = tmp_path / "alertmanager.yaml"
        am_config.write_text(render_artefact("alertmanager", relay_profile), encoding="utf-8")
        alertmanager = group.start(
            "alertmanager",
            [
                str(alertmanager_binary),
                f"--config.file={am_config}",
                f"--storage.path={tmp_path / 'am-data'}",
                f"--web.listen-address=127.0.0.1:{am_port}",
                "--cluster.listen-address=",
            ],
            tmp_path / "alertmanager.log",
        )
        alertmanager.wait_until(lambda: http_ok(f"http://127.0.0.1:{am_port}/-/ready"), START_TIMEOUT, "ready")

        # Prometheus evaluates the rendered rules every second and sends alerts to Alertmanager (reloaded on SIGHUP).
        rules = tmp_path / "rules.yaml"
        rules.write_text(render_artefact("rules", relay_profile), encoding="utf-8")
        prometheus_config = {
            "global": {"scrape_interval": "15s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config), encoding="utf-8")
        backend.processes[0].signal_group(signal.SIGHUP)
        wait_until(lambda: requests.get(f"{backend.query.url}/api/v1/rules", timeout=5).json()["data"]["groups"],
                   bool, 30, "Prometheus loaded the rendered rules")  # fmt: skip

        endpoints = CollectorEndpoints.pick()
        deployment = local_deployment(relay_profile, backend, endpoints, certs, tmp_path)
        salt = {relay_profile.data["deidentification"]["salt_env"]: "alert-relay-test"}
        start_collector(group, tmp_path, render_collector_config(deployment.profile), endpoints, env=salt)
        (tmp_path / "slow").mkdir()
        (tmp_path / "fast").mkdir()
        slow = start_synthetic(group, tmp_path / "slow", SLOW)
        fast = start_synthetic(group, tmp_path / "fast", FAST)
        telemetry = service_telemetry(deployment, 1.0, histogram_kind(relay_profile, VerifySettings()))
        try:

            def said(status: str) -> Callable[[], bool]:
                return lambda: all(r.messages_about(ALERT, status) for r in robots)

            # Slow: a few requests at a time, until every robot has the alert.
            _load_until(slow.url, telemetry.metrics, 2, said("firing"), FIRING_TIMEOUT, f"{ALERT} firing in chat")
            # Recovered: the 5-minute p95 falls back once the slow requests are under 5% of the window.
            _load_until(fast.url, telemetry.metrics, 25, said("resolved"), RESOLVED_TIMEOUT, f"{ALERT} resolved")
        finally:
            telemetry.shutdown()

        stats = requests.get(f"{relay.url}/-/stats", timeout=5).json()
        metrics = requests.get(f"{relay.url}/metrics", timeout=5).text
        assert requests.get(f"{relay.url}/-/health", timeout=5).text == "ok\n"
        relay.process.stop()
        assert relay.process.popen.returncode == 0, "the relay did not exit 0 on SIGTERM"

    for robot in robots:
        assert not robot.violations, (robot.name, robot.violations)
        assert not robot.over_limit(), (robot.name, robot.over_limit())
        counts = stats["robots"][robot.name]
        assert counts["attempts"]["rate_limited"] >= 1, counts  # the first answer was "too frequent", and retried
        assert not any(counts["dropped"].values()), counts
        firing = robot.messages_about(ALERT, "firing")[0]
        assert firing.at < robot.messages_about(ALERT, "resolved")[-1].at
        assert "0.25s" in firing.text and DEFAULT_MODEL in firing.text, firing.text
    assert 'tokenlat_relay_send_attempts_total{robot="dingtalk",outcome="ok"}' in metrics

    log = (tmp_path / "relay.log").read_text(encoding="utf-8")
    for value in env.values():
        assert value not in log, "a robot's URL or secret is in the relay's log"
    for robot in robots:
        assert robot.token not in log
