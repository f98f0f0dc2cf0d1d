"""verify's traces checks against the real two-Collector setup: the verified Collector in front of a trace sink."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import DATA
from tokenlat_cli.collector import validate_config
from tokenlat_cli.profiles import Profile, load_profile
from tokenlat_cli.render import render_collector_config
from tokenlat_cli.verify import own_metrics
from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.services import CollectorEndpoints, start_collector
from tokenlat_cli.verify.traces import TraceSink, plan_traces, start_trace_sink, trace_checks


@dataclass
class _Setup:
    sink: TraceSink
    profile: dict[str, Any]  # the profile as rendered for this run
    otlp_endpoint: str
    salt: str
    workdir: Path


def _local(profile: Profile, endpoints: CollectorEndpoints, sink: TraceSink) -> Profile:
    """The profile with its addresses pointed at free local ports and its traces at the sink, as verify's
    local_deployment does (done here so that this test does not follow that function's other arguments: metrics
    delivery is not what it checks; the metrics exporter points at a closed port)."""
    data = copy.deepcopy(profile.data)
    data["backend"]["endpoint"] = "http://127.0.0.1:1/api/v1/write"
    data["receiver"]["grpc_endpoint"] = endpoints.otlp_grpc
    data["receiver"]["http_endpoint"] = endpoints.otlp_http
    data["service"]["health_endpoint"] = endpoints.health
    host, port = endpoints.telemetry.rsplit(":", 1)
    data["service"].update(telemetry_host=host, telemetry_port=int(port))
    data["traces"].update(endpoint=sink.otlp_endpoint, insecure=True, decision_wait="1s")
    return Profile(profile.name, profile.source, data)


@pytest.fixture(scope="module")
def traces_setup(collector_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_Setup]:
    """The trace sink, and a Collector rendered from tests/data/traces.yaml sending its traces there."""
    workdir = tmp_path_factory.mktemp("traces")
    salt = "tokenlat-test-salt"
    with ProcessGroup() as group:
        sink = start_trace_sink(group, workdir)
        endpoints = CollectorEndpoints.pick()
        profile = _local(load_profile(str(DATA / "traces.yaml")), endpoints, sink)
        assert not profile.data["receiver"]["tls"]["enabled"]  # plain gRPC below
        salt_env = profile.data["deidentification"]["salt_env"]
        start_collector(group, workdir, render_collector_config(profile), endpoints, env={salt_env: salt})
        yield _Setup(sink, profile.data, f"http://{endpoints.otlp_grpc}", salt, workdir)


def test_sink_config_is_accepted_by_the_collector(traces_setup: _Setup) -> None:
    validate_config((traces_setup.workdir / "trace-sink.yaml").read_text(encoding="utf-8"))


def test_traces_pipeline_keeps_what_the_profile_promises(traces_setup: _Setup) -> None:
    s = traces_setup
    checks = trace_checks(s.sink, s.otlp_endpoint, None, s.profile, s.salt)
    assert [c.name for c in checks] == [
        "traces kept: VIP tier",
        "traces kept: errors",
        "traces kept: slow TTFT",
        "traces kept: ordinary (sampled)",
        "whole traces kept",
        "user ids de-identified in traces",
    ]
    assert all(c.passed for c in checks), "\n".join(map(str, checks))
    by_name = {c.name: c for c in checks}
    assert by_name["traces kept: VIP tier"].observed == 40
    # Some kept traces have a child span, so "whole" did check more than root spans.
    assert "0 of them with a child span" not in by_name["whole traces kept"].detail


def test_vip_check_fails_when_the_collector_does_not_keep_the_tier(traces_setup: _Setup) -> None:
    s = traces_setup
    # The generator sends the tier this profile claims; the running Collector only keeps "vip".
    claimed = copy.deepcopy(s.profile)
    claimed["traces"]["vip_values"] = ["platinum"]
    checks = {c.name: c for c in trace_checks(s.sink, s.otlp_endpoint, None, claimed, s.salt, seed=1)}
    vip = checks["traces kept: VIP tier"]
    assert not vip.passed and vip.observed < vip.expected, vip  # type: ignore[operator]
    assert all(c.passed for name, c in checks.items() if name != "traces kept: VIP tier"), checks


@dataclass
class _TwoTiers:
    sink: TraceSink
    profile: dict[str, Any]  # the agent's profile as rendered for this run
    agent_endpoint: str
    gateway_telemetry: list[str]  # each gateway's own metrics URL
    salt: str


@pytest.fixture(scope="module")
def two_tiers(collector_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[_TwoTiers]:
    """The same traces profile as the two-tier layout: an agent routing by trace id to two gateways, which
    tail-sample into the sink."""
    workdir = tmp_path_factory.mktemp("two-tier-traces")
    salt = "tokenlat-test-salt"
    base = load_profile(str(DATA / "traces.yaml"))
    salt_env = base.data["deidentification"]["salt_env"]
    with ProcessGroup() as group:
        sink = start_trace_sink(group, workdir)
        gateways = []
        for i in range(2):
            endpoints = CollectorEndpoints.pick()
            (workdir / f"gateway-{i}").mkdir()
            config = render_collector_config(_local(base, endpoints, sink), "gateway")
            gateways.append(start_collector(group, workdir / f"gateway-{i}", config, endpoints, env={salt_env: salt}))
        endpoints = CollectorEndpoints.pick()
        agent = _local(base, endpoints, sink)
        agent.data["tiers"]["gateways"] = [g.otlp_grpc_endpoint for g in gateways]
        (workdir / "agent").mkdir()
        start_collector(
            group, workdir / "agent", render_collector_config(agent, "agent"), endpoints, env={salt_env: salt}
        )
        yield _TwoTiers(sink, agent.data, f"http://{endpoints.otlp_grpc}", [g.telemetry_url for g in gateways], salt)


def test_two_tiers_keep_whole_traces_spread_over_the_gateways(two_tiers: _TwoTiers) -> None:
    """Routing by trace id: every span of a trace meets at one gateway, so tail sampling keeps traces whole, while
    the traces spread over both gateways (routing by service would send them all to one) and each span reaches
    exactly one gateway."""
    s = two_tiers
    checks = trace_checks(s.sink, s.agent_endpoint, None, s.profile, s.salt, seed=2)
    assert all(c.passed for c in checks), "\n".join(map(str, checks))
    sent = sum(t.span_count for t in plan_traces(400, 2))
    accepted = [
        own_metrics.total(own_metrics.scrape(url), "otelcol_receiver_accepted_spans") for url in s.gateway_telemetry
    ]
    assert sum(accepted) == sent, accepted
    assert min(accepted) >= sent * 0.3, f"one gateway got {min(accepted):.0f} of {sent} spans: traces not spread"
