"""Rendering: golden files, drift of the committed configs, and acceptance by the built Collector."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import DATA, REPO
from tokenlat import semconv
from tokenlat.buckets import BucketLayout
from tokenlat_cli.configs import expected_configs
from tokenlat_cli.main import cli
from tokenlat_cli.profiles import Profile, load_profile
from tokenlat_cli.render import render_collector_config, series_estimate

GOLDEN = REPO / "tests" / "golden"
# Every component the distribution must carry, by the names the pinned release reports.
REQUIRED_COMPONENTS = {
    "receivers": {"otlp"},
    "processors": {
        "memory_limiter",
        "batch",
        "attributes",
        "transform",
        "filter",
        "resource",
        "probabilistic_sampler",
        "tail_sampling",
    },
    "exporters": {"prometheus_remote_write", "otlp_grpc", "otlp_http", "debug", "load_balancing"},
    "extensions": {"health_check", "pprof", "file_storage", "bearertokenauth"},
}


def test_render_matches_golden_file() -> None:
    rendered = render_collector_config(load_profile(str(DATA / "full.yaml")))
    assert rendered == (GOLDEN / "full.yaml").read_text(encoding="utf-8"), (
        "render output changed: if intended, re-render tests/golden/full.yaml"
    )


def test_committed_configs_have_not_drifted() -> None:
    directory = REPO / "collector" / "configs"
    expected = expected_configs()
    assert sorted(p.name for p in directory.glob("*.yaml")) == sorted(expected), "run `make configs` and commit"
    for name, text in expected.items():
        assert (directory / name).read_text(encoding="utf-8") == text, (
            f"collector/configs/{name} differs from a fresh render: run `make configs` and commit"
        )


def test_render_is_deterministic_and_yaml() -> None:
    profile = load_profile("local")
    first = render_collector_config(profile)
    assert first == render_collector_config(profile)
    config = yaml.safe_load(first)
    assert config["service"]["pipelines"]["metrics"]["processors"][0] == "memory_limiter"
    assert config["exporters"]["prometheus_remote_write"]["http"]["endpoint"] == "http://127.0.0.1:9090/api/v1/write"


def test_secrets_are_referenced_never_written() -> None:
    text = (GOLDEN / "full.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(text)
    assert config["extensions"]["bearertokenauth/backend"] == {"scheme": "Basic", "token": "${env:TOKENLAT_RW_BASIC}"}
    assert (
        config["exporters"]["prometheus_remote_write"]["http"]["headers"]["X-Api-Key"] == "${env:TOKENLAT_RW_API_KEY}"
    )
    header = text.split("\n\n", 1)[0]
    for var in ("TOKENLAT_RW_API_KEY", "TOKENLAT_RW_BASIC", "TOKENLAT_SALT"):
        assert f"#   {var}" in header, f"the header must list {var}"


def test_output_file_written_and_stdout_identical(runner: CliRunner, tmp_path: Path) -> None:
    out = tmp_path / "sub" / "local.yaml"
    to_file = runner.invoke(cli, ["render", "--profile", "local", "-o", str(out)])
    to_stdout = runner.invoke(cli, ["render", "--profile", "local"])
    assert to_file.exit_code == 0 and to_stdout.exit_code == 0
    assert out.read_text(encoding="utf-8") == to_stdout.stdout
    assert sorted(p.name for p in out.parent.iterdir()) == ["local.yaml"]


def test_two_tier_roles_route_every_signal_through_the_gateways() -> None:
    """Agents route metrics by resource and traces by trace id to tiers.gateways, and export nothing to a backend;
    gateways guard and remote-write the metrics, and tail-sample the traces."""
    profile = load_profile("aliyun")
    agent = yaml.safe_load(render_collector_config(profile, "agent"))
    gateway = yaml.safe_load(render_collector_config(profile, "gateway"))
    pipelines = agent["service"]["pipelines"]
    assert pipelines["metrics"]["exporters"] == ["load_balancing/metrics"]
    assert pipelines["traces"]["exporters"] == ["load_balancing/traces"]
    assert "tail_sampling" not in agent["processors"] and "transform/deidentify" in agent["processors"]
    assert agent["exporters"]["load_balancing/metrics"]["routing_key"] == "resource"
    assert agent["exporters"]["load_balancing/traces"]["routing_key"] == "traceID"
    for exporter in ("load_balancing/metrics", "load_balancing/traces"):
        assert agent["exporters"][exporter]["resolver"]["static"]["hostnames"] == profile.data["tiers"]["gateways"]
    assert "prometheus_remote_write" not in agent["exporters"] and "bearertokenauth/backend" not in agent["extensions"]
    assert gateway["service"]["pipelines"]["traces"]["processors"] == ["memory_limiter", "tail_sampling", "batch"]
    assert gateway["service"]["pipelines"]["metrics"] == {
        "receivers": ["otlp"],
        "processors": ["memory_limiter", "transform/metric_allowlist", "batch"],
        "exporters": ["prometheus_remote_write"],
    }
    assert "load_balancing/metrics" not in gateway["exporters"]


def test_agents_route_metrics_as_the_profile_says(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("extends: aliyun\ntiers:\n  metrics_routing: service\n", encoding="utf-8")
    agent = yaml.safe_load(render_collector_config(load_profile(str(path)), "agent"))
    route = agent["exporters"]["load_balancing/metrics"]
    assert route["routing_key"] == "service"


@pytest.mark.parametrize(("name", "tls"), [("aliyun", True), ("thanos", False)])
def test_agents_speak_tls_to_the_gateways_exactly_when_the_receiver_does(name: str, tls: bool) -> None:
    """The gateways run the profile's receiver: an agent of a profile without receiver TLS speaks plain text to
    them (TLS would fail every handshake), and one with mutual TLS presents the tier's certificate."""
    data = load_profile(name).data
    data["tiers"]["gateways"] = ["gw-0:4317"]
    agent = yaml.safe_load(render_collector_config(Profile(name, name, data), "agent"))
    settings = agent["exporters"]["load_balancing/metrics"]["protocol"]["otlp"]["tls"]
    assert data["receiver"]["tls"]["enabled"] is tls
    assert settings["insecure"] is not tls
    assert ("cert_file" in settings) is tls


def test_a_two_tier_layout_needs_no_traces() -> None:
    """Metrics alone go through the tiers too: a profile without traces renders both roles, without a traces
    pipeline."""
    data = load_profile("local").data
    data["tiers"]["gateways"] = ["127.0.0.1:4317"]
    profile = Profile("local", "local", data)
    for role in ("agent", "gateway"):
        config = yaml.safe_load(render_collector_config(profile, role))
        assert list(config["service"]["pipelines"]) == ["metrics"]


def test_agent_needs_gateways(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("extends: aliyun\ntiers:\n  gateways: []\n", encoding="utf-8")
    result = runner.invoke(cli, ["render", "--profile", str(path), "--role", "agent"])
    assert result.exit_code == 2
    assert "tiers.gateways: --role agent needs the gateways' host:port addresses" in result.output


def test_render_reports_the_series_the_allowlist_allows(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["render", "--profile", "aliyun"])
    assert result.exit_code == 0
    combinations = 2 * 1 * 8 * 2 * 3  # operations x providers x models x GPU types x tiers (aliyun's declared counts)
    layout = BucketLayout()  # aliyun: classic histograms, the default geometric buckets
    series_per_histogram = {
        spec.name: len(layout.bounds(spec.name)) + 3 for spec in semconv.ALL_METRICS
    }  # buckets, +Inf, sum, count
    for spec in semconv.ALL_METRICS:  # the cost of accuracy, per metric
        buckets = len(layout.bounds(spec.name))
        line = f"  {semconv.prometheus_name(spec)}: {buckets} buckets, {buckets + 3} series per attribute set"
        assert line in result.stderr.splitlines()
    series_per_histogram[semconv.REQUEST_DURATION] *= 6 + 1  # error types, and no error
    series_per_histogram[semconv.TOKEN_USAGE] *= 2  # input, output
    expected = combinations * sum(series_per_histogram.values())
    assert f"active series: at most {expected:,} from the metric allowlist" in result.stderr
    assert "no count declared" not in result.stderr
    assert "histograms: classic, buckets geometric (quantiles within 5% of the truth in range)" in result.stderr
    assert f"services and sidecars: TOKENLAT_HISTOGRAM=explicit TOKENLAT_BUCKETS='{layout}'" in result.stderr


def test_render_native_histograms_cost_one_series_each(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["render", "--profile", "local"])
    assert result.exit_code == 0 and "histograms: native" in result.stderr
    for spec in semconv.ALL_METRICS:
        assert f"  {semconv.prometheus_name(spec)}: 1 series per attribute set" in result.stderr.splitlines()
    assert "TOKENLAT_HISTOGRAM=exponential" in result.stderr
    assert "#   TOKENLAT_HISTOGRAM=exponential" in result.stdout  # the header tells services too


def test_the_overflow_marker_passes_the_allowlist() -> None:
    # A service at its cap of attribute sets sends one otel.metric.overflow=true point per metric; dropping the key
    # would merge it into the series without attributes.
    config = yaml.safe_load(render_collector_config(load_profile("local")))
    (statement,) = config["processors"]["transform/metric_allowlist"]["metric_statements"][1]["statements"]
    assert statement.startswith('aggregate_on_attributes("sum", [') and '"otel.metric.overflow"]' in statement


def test_listed_values_count_with_their_other_value() -> None:
    # full.yaml lists 2 request models and 1 GPU type, and declares no other count: (2 + 1) x (1 + 1) combinations.
    estimate = series_estimate(load_profile(str(DATA / "full.yaml")))
    assert estimate.undeclared == [semconv.GEN_AI_OPERATION_NAME]
    per_set = sum(
        n * (2 if spec is semconv.TOKEN_USAGE_SPEC else 1) * (2 if spec is semconv.DURATION_SPEC else 1)
        for spec in semconv.ALL_METRICS
        for n in [estimate.per_histogram[spec.name]]
    )
    assert estimate.total == 3 * 2 * per_set
