"""Classic buckets sent as native histograms with custom buckets (NHCB): one series per histogram, the same
accuracy, into a real Prometheus 3."""

from __future__ import annotations

import json
from pathlib import Path

from tests.subprocesses import failed_first, verify_subprocess
from tokenlat import semconv


def test_verify_classic_buckets_sent_as_native_histograms_with_custom_buckets(
    collector_binary: Path, prometheus3_binary: Path, tmp_path: Path
) -> None:
    profile = tmp_path / "nhcb.yaml"
    profile.write_text(
        "extends: local\nmetrics:\n  histograms: classic\n  native_custom_buckets: true\n", encoding="utf-8"
    )
    report = tmp_path / "report.json"
    result = verify_subprocess(
        ["--profile", str(profile), "--requests", "100", "--concurrency", "50", "--json", str(report)],
        env={"PROMETHEUS_BIN": str(prometheus3_binary)},
    )
    assert result.returncode == 0, failed_first(result)
    checks = {c["name"]: c for c in json.loads(report.read_text(encoding="utf-8"))["checks"]}
    ttft = semconv.prometheus_name(semconv.TTFT_SPEC)
    # Classic accuracy (the layout's 5%), read with the one-series queries: nothing of _bucket series exists.
    assert checks[f"{ttft} p99 vs the truth"]["tolerance"] == 0.05
    assert checks[f"{ttft} p99 as the buckets allow"]["passed"]
    assert checks[f"{ttft} exemplars are the load's request traces"]["passed"]
    assert all(c["passed"] for c in checks.values())
