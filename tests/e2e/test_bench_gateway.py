"""The gateway bench (bench/gateway.py), in two short runs, so that it cannot rot: telemetrygen, the gateway render
of the selfhosted profile, VictoriaMetrics as the sink, and the figures written.

Nothing timed is asserted (throughput on a shared machine decides nothing here): each step must hold sane figures
(points accepted and exported, CPU and RSS read, the sink holding the series sent), and with the memory_limiter's
limit at its minimum (32 MiB, of which 8 spike) the run must see the limiter refuse. A missing telemetrygen is a
failure, never a skip: `make test` installs it (make telemetrygen).
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from bench import gateway, gateway_report
from bench.telemetrygen import find_telemetrygen
from tests.e2e.bench_runs import keep_results
from tokenlat_cli.verify.processes import ServiceError

SHORT = ["--warmup", "5", "--measure", "5", "--interval", "3"]


@pytest.fixture(scope="module")
def telemetrygen_binary() -> Path:
    try:
        return find_telemetrygen()
    except ServiceError as exc:
        pytest.fail(f"end-to-end prerequisite missing: {exc}")


def _run(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[int, gateway.Result, str]:
    results = keep_results(gateway, monkeypatch)
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = gateway.main(argv)
    (result,) = results
    return code, result, out.getvalue()


def test_one_step_of_each_sweep_holds_sane_figures(
    collector_binary: Path, telemetrygen_binary: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    doc, data = tmp_path / "benchmarks.md", tmp_path / "gateway.json"
    argv = [
        *SHORT, "--rates", "1000", "--gauge-rate", "1000", "--classic-sets", "20", "--native-sets", "100",
        "--series-rate", "500", "--series-intervals", "3,6",
    ]  # fmt: skip
    code, result, out = _run([*argv, "--markdown", str(doc), "--json", str(data)], monkeypatch)
    assert code == 0, out
    assert result.passed, [c for c in result.checks if not c.ok]
    sweeps = [gateway.RATE, gateway.GAUGE, gateway.LIBRARY, gateway.LIBRARY, gateway.SERIES, gateway.SERIES]
    assert [s.sweep for s in result.steps] == sweeps
    library = [s.metric_type for s in result.steps if s.sweep == gateway.LIBRARY]
    assert library == ["tokenlat-classic", "tokenlat-native"]
    assert result.role in ("gateway", "standalone")
    for step in result.steps:
        w = step.window
        assert step.accepted_rate > 0 and step.exported_rate > 0, out
        assert not step.refusing, out  # the profile's 512 MiB is far above what a few hundred points/s hold
        assert 0 < w.gateway_cores < 4 and w.sink_cores > 0, out
        assert step.gateway_rss_mib_mean > 0 and step.gateway_rss_mib_max >= step.gateway_rss_mib_mean, out
        if step.countable:  # all but native histograms, which VictoriaMetrics does not store from remote write
            assert step.series_at_sink is not None and step.series_at_sink > 0, out
    # The figures the docs quote are computed, and written to both files.
    assert result.cost_model is not None and result.cost_model.per_point + result.cost_model.per_series > 0
    assert all(result.tokenlat_cpu_per_point(kind) for kind in (gateway.CLASSIC, gateway.NATIVE))
    assert result.rss_per_100k_series("gateway") is not None
    figures = doc.read_text().split(gateway_report.BEGIN, 1)[1].split(gateway_report.END, 1)[0]
    assert "| " + " | ".join(gateway_report.TESTBED_HEADERS) + " |" in figures
    assert "testbed Metric10kDPS/OTLP" in figures and "tokens/s per gateway core" in figures
    written = json.loads(data.read_text())
    assert len(written["steps"]) == 6 and written["figures"]["points_per_core_at_capacity"] > 0


def test_a_tiny_memory_limit_is_seen_refusing(
    collector_binary: Path, telemetrygen_binary: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 32 MiB, spike 8: the limiter refuses once the heap passes 24 MiB, which a few thousand histogram points a
    # second in the batch and the exporter's requests exceed (the sweep stops at the first refusing step).
    argv = [
        *SHORT, "--rates", "2000,6000,12000", "--limit-mib", "32", "--gauge-rate", "0", "--classic-sets", "0",
        "--native-sets", "0", "--series-intervals", "",
    ]  # fmt: skip
    code, result, out = _run(argv, monkeypatch)
    assert code == 0, out
    refusal = result.refusal
    assert refusal is not None, out
    assert refusal.refused_rate > 0 and refusal.accepted_rate >= 0, out
    assert result.memory_limiter["limit_mib"] == 32
    assert "started refusing at" in out
