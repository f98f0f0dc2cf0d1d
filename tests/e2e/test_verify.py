"""`tokenlat verify` end to end: the ocb-built Collector, a real Prometheus, the synthetic model server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import DATA
from tests.subprocesses import failed_first, verify_subprocess
from tokenlat import semconv
from tokenlat_cli import collector
from tokenlat_cli.collector import CollectorError, find_collector
from tokenlat_cli.main import cli
from tokenlat_cli.verify.prometheus import Prometheus


def _checks(path: Path) -> dict[str, dict[str, object]]:
    return {c["name"]: c for c in json.loads(path.read_text(encoding="utf-8"))["checks"]}


def test_verify_local_profile_passes(collector_binary: Path, prometheus_binary: Path, tmp_path: Path) -> None:
    report = tmp_path / "report.json"
    result = verify_subprocess(
        ["--profile", "local", "--requests", "200", "--concurrency", "50", "--json", str(report)],
        env={"TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, failed_first(result)
    stages = ("[1/7] starting the prometheus backend", "[5/7] streaming 200", "200/200 requests done", "[7/7] stopping")
    for stage in stages:
        assert stage in result.stderr
    # The run says which Prometheus it started: the default, the pinned Prometheus 3 unless $PROMETHEUS_BIN is set.
    assert f"Prometheus {Prometheus.probe(prometheus_binary).version} at http://127.0.0.1:" in result.stderr
    assert "verify PASSED" in result.stdout
    checks = _checks(report)
    assert all(c["passed"] for c in checks.values())
    requests = checks["gen_ai_server_request_duration_seconds count (requests)"]
    assert requests["expected"] == 200 and requests["observed"] == 200
    output = checks["gen_ai_client_token_usage sum (output tokens)"]
    assert output["expected"] == output["observed"] and output["expected"] >= 200 * 16
    itl = checks["gen_ai_server_inter_token_latency_seconds count (every token after the first)"]
    assert itl["observed"] == itl["expected"] == output["expected"] - 200
    assert json.loads(report.read_text(encoding="utf-8"))["settings"]["histogram"] == "exponential"  # the profile's
    _assert_quantiles(checks, target=0.02)
    for spec in (semconv.TTFT_SPEC, semconv.DURATION_SPEC):  # the drill-down from a bucket to a request's trace
        row = checks[f"{semconv.prometheus_name(spec)} exemplars are the load's request traces"]
        found, of = row["observed"].split(" of ")
        assert row["passed"] and found == of and int(of) > 0
    assert checks["no request-id or user-id labels"]["passed"]
    assert not list(tmp_path.glob("tokenlat-verify-*")), "the temp dir must be removed without --keep"


def _assert_quantiles(checks: dict[str, dict[str, object]], target: float) -> None:
    """Every quantile's two rows: within ``target`` of the truth, and what the buckets allow (the pipeline)."""
    for spec in (semconv.TTFT_SPEC, semconv.TPOT_SPEC, semconv.DURATION_SPEC, semconv.ITL_SPEC):
        for q in ("p50", "p90", "p95", "p99"):
            truth = checks[f"{semconv.prometheus_name(spec)} {q} vs the truth"]
            assert truth["tolerance"] == target and isinstance(truth["error"], float), truth
            assert truth["passed"] and abs(truth["error"]) <= target, truth
            assert checks[f"{semconv.prometheus_name(spec)} {q} as the buckets allow"]["passed"]


def test_verify_classic_histograms_within_the_layouts_target(
    collector_binary: Path, prometheus_binary: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    result = verify_subprocess(
        ["--profile", "local", "--histogram", "explicit", "--requests", "150", "--concurrency", "50",
         "--json", str(report)]
    )  # fmt: skip
    assert result.returncode == 0, failed_first(result)
    checks = _checks(report)
    assert all(c["passed"] for c in checks.values())
    _assert_quantiles(checks, target=0.05)  # the default geometric layout


def test_verify_tells_coarse_buckets_from_a_broken_pipeline(
    collector_binary: Path, prometheus_binary: Path, tmp_path: Path
) -> None:
    # The conventions' buckets: quantiles far from the truth, yet nothing lost on the way. The report must say
    # exactly that: rows against the truth fail, rows against what the buckets allow pass.
    profile = tmp_path / "semconv.yaml"
    profile.write_text("extends: local\nmetrics:\n  histograms: classic\n  buckets: semconv\n", encoding="utf-8")
    report = tmp_path / "report.json"
    result = verify_subprocess(
        ["--profile", str(profile), "--requests", "100", "--concurrency", "50", "--json", str(report)]
    )
    assert result.returncode == 1, failed_first(result)
    checks = _checks(report)
    truth_rows = [c for name, c in checks.items() if name.endswith(" vs the truth")]
    pipeline_rows = [c for name, c in checks.items() if name.endswith(" as the buckets allow")]
    assert len(truth_rows) == len(pipeline_rows) == 16
    assert not any(c["passed"] for c in truth_rows) and all("promise no accuracy" in c["detail"] for c in truth_rows)
    assert all(c["passed"] for c in pipeline_rows)
    assert max(abs(c["error"]) for c in truth_rows) > 0.2  # what users would have acted on
    others = [c for name, c in checks.items() if not name.endswith(" vs the truth")]
    assert all(c["passed"] for c in others)


# The tests above run against the Prometheus verify starts by default (the pinned Prometheus 3); these run the same
# proof, classic and native histograms, against Debian's 2.42, whose flags differ (native histograms are a feature).
@pytest.mark.parametrize("histogram", ["explicit", "exponential"])
def test_verify_local_profile_against_debian_prometheus_2(
    collector_binary: Path, debian_prometheus_binary: Path, tmp_path: Path, histogram: str
) -> None:
    report = tmp_path / "report.json"
    result = verify_subprocess(
        ["--profile", "local", "--histogram", histogram, "--requests", "150", "--concurrency", "50",
         "--json", str(report)],
        env={"PROMETHEUS_BIN": str(debian_prometheus_binary), "TMPDIR": str(tmp_path)},
    )  # fmt: skip
    assert result.returncode == 0, failed_first(result)
    version = Prometheus.probe(debian_prometheus_binary).version
    assert version.startswith("2.") and f"Prometheus {version} at http://127.0.0.1:" in result.stderr
    checks = _checks(report)
    assert all(c["passed"] for c in checks.values()), [c for c in checks.values() if not c["passed"]]
    # Every count and quantile passed: with exponential histograms that means 2.42 stored the native histograms
    # (without its feature flag it refuses them and nothing arrives).
    assert checks["gen_ai_server_request_duration_seconds count (requests)"]["observed"] == 150
    assert not list(tmp_path.glob("tokenlat-verify-*"))


def test_verify_mutual_tls_refuses_a_client_without_a_certificate(
    collector_binary: Path, prometheus_binary: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    result = verify_subprocess(
        ["--profile", str(DATA / "mtls.yaml"), "--requests", "60", "--concurrency", "30", "--json", str(report)],
        env={"TMPDIR": str(tmp_path)},
    )
    assert result.returncode == 0, failed_first(result)
    assert "(mutual TLS)" in result.stderr
    checks = _checks(report)
    assert checks["OTLP client without a client certificate"]["observed"] == "rejected"
    assert checks["OTLP client with the client certificate"]["observed"] == "accepted"
    assert checks["gen_ai_server_request_duration_seconds count (requests)"]["observed"] == 60
    assert not list(tmp_path.glob("tokenlat-verify-*")), "certificates and keys must not outlive the run"


# Quantiles within the histograms' target of what the sidecar can have read (between the model server's writes and
# the client's reads), at the default concurrency of 100 with exponential histograms (the sidecar's TTFT starts when
# a request reaches it, so a load that queued its requests would fail here).
@pytest.mark.parametrize(("histogram", "concurrency"), [("explicit", "40"), ("exponential", "100")])
def test_verify_via_sidecar_measures_from_outside(
    collector_binary: Path, prometheus_binary: Path, tmp_path: Path, histogram: str, concurrency: str
) -> None:
    report = tmp_path / "report.json"
    result = verify_subprocess(
        [
            "--profile",
            "local",
            "--via-sidecar",
            "--requests",
            "120",
            "--concurrency",
            concurrency,
            "--histogram",
            histogram,
            "--json",
            str(report),
        ]
    )
    assert result.returncode == 0, failed_first(result)
    assert "through the tokenlat sidecar" in result.stderr
    checks = _checks(report)
    assert all(c["passed"] for c in checks.values())
    requests = checks["gen_ai_server_request_duration_seconds count (requests)"]
    assert requests["observed"] == 120
    output = checks["gen_ai_client_token_usage sum (output tokens)"]
    itl = checks["gen_ai_server_inter_token_latency_seconds count (every token after the first)"]
    assert itl["observed"] == output["observed"] - 120
    truth_rows = [c for name, c in checks.items() if name.endswith(" vs the truth")]
    assert len(truth_rows) == 16 and all("measured through the sidecar" in c["detail"] for c in truth_rows)
    if histogram == "exponential":
        assert all(c["tolerance"] == 0.02 for c in truth_rows)  # native histograms' own target, nothing added
    assert "through the sidecar, the widest interval a quantile could pass in was" in result.stdout  # how sharp


def test_verify_fails_when_the_pipeline_loses_information(
    collector_binary: Path, prometheus_binary: Path, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    result = verify_subprocess(
        [
            "--profile",
            str(DATA / "drops-token-type.yaml"),
            "--requests",
            "50",
            "--concurrency",
            "25",
            "--deadline",
            "5",
            "--json",
            str(report),
        ]
    )
    assert result.returncode == 1, failed_first(result)
    assert "verify FAILED" in result.stdout
    checks = _checks(report)
    assert not checks["gen_ai_client_token_usage sum (output tokens)"]["passed"]
    assert checks["gen_ai_server_request_duration_seconds count (requests)"]["passed"]


def test_a_service_that_dies_on_start_shows_its_log(collector_binary: Path, tmp_path: Path) -> None:
    fake = tmp_path / "prometheus"
    # It tells its version (verify asks, to choose the flags), then dies on start.
    fake.write_text(
        "#!/bin/sh\n[ \"$1\" = --version ] && { echo 'prometheus, version 3.16.0'; exit 0; }\n"
        "echo 'err: listen tcp: address already in use' >&2\nexit 3\n",
        encoding="utf-8",
    )
    fake.chmod(0o755)
    result = verify_subprocess(["--profile", "local"], env={"PROMETHEUS_BIN": str(fake), "TMPDIR": str(tmp_path)})
    assert result.returncode == 1
    assert "prometheus exited with code 3 before it was ready" in result.stderr
    assert "err: listen tcp: address already in use" in result.stderr
    assert not list(tmp_path.glob("tokenlat-verify-*"))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--profile", "local", "--requests", "0"], "Invalid value for '--requests': 0 is not in the range x>=1."),
        (["--profile", "local", "--ttft", "gamma:1"], "Invalid value for '--ttft': invalid distribution 'gamma:1'"),
        (["--profile", "local", "--output-tokens", "9-3"], "Invalid value for '--output-tokens': '9-3': need 1 <= LO"),
        (["--profile", str(DATA / "bearer.yaml")], "backend.auth.kind bearer: no local receiver here checks bearer"),
        (["--profile", "nosuch"], "no such built-in profile"),
    ],
)
def test_bad_usage_exits_2(runner: CliRunner, args: list[str], message: str) -> None:
    result = runner.invoke(cli, ["verify", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_missing_collector_says_how_to_build_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(collector.BINARY_ENV, raising=False)
    monkeypatch.setattr(collector, "_SOURCE_BUILD", tmp_path / "absent")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(CollectorError, match=r"tokenlat-otelcol not found: run `make collector`"):
        find_collector()
    result = CliRunner().invoke(cli, ["verify", "--profile", "local"])
    assert result.exit_code == 1
    assert "run `make collector`" in result.output


@pytest.mark.parametrize("profile", ["aliyun", "tencent", "thanos", "selfhosted"])
def test_verify_each_builtin_profile_against_its_real_receiver(
    collector_binary: Path, prometheus_binary: Path, profile: str, tmp_path: Path
) -> None:
    report = tmp_path / "report.json"
    result = verify_subprocess(["--profile", profile, "--requests", "60", "--concurrency", "30", "--json", str(report)],
                     env={"TMPDIR": str(tmp_path)})  # fmt: skip
    assert result.returncode == 0, failed_first(result)
    checks = _checks(report)
    assert all(c["passed"] for c in checks.values()), [c for c in checks.values() if not c["passed"]]
    assert checks["gen_ai_server_request_duration_seconds count (requests)"]["observed"] == 60
    if profile in ("aliyun", "tencent", "thanos"):  # a credential: basic auth, or thanos' client certificate
        assert checks["wrong backend credential fails visibly"]["observed"].endswith(", 0 arrived")
    if profile == "aliyun":  # mutual TLS for services, tail-sampled traces
        assert checks["OTLP client without a client certificate"]["observed"] == "rejected"
        assert checks["traces kept: VIP tier"]["passed"] and checks["user ids de-identified in traces"]["passed"]
    if profile == "thanos":
        assert checks["requests stored under tenant_id=llm-inference"]["observed"] == 60
    assert not list(tmp_path.glob("tokenlat-verify-*"))
