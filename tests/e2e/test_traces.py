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
from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.services import CollectorEndpoints, start_collector
from tokenlat_cli.verify.traces import TraceSink, start_trace_sink, trace_checks


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
