"""The accuracy benchmark on a small workload: its emulations of Prometheus' histogram_quantile give the values of
Prometheus' own tests, its verdicts follow the figures, and the markdown is written. (The emulations are
tokenlat_cli.verify.statistics'; the values worked out by hand are in tests/unit/test_verify_statistics.py.)

One run of 2,000 values per workload (a fraction of a second) serves the tests that need figures. Unlike a timing
bench, these figures are deterministic for a seed, so outcomes are asserted: they are what the bucket layouts
promise, and a change to tokenlat.buckets or to the emulations that breaks a promise fails here.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest

from bench import accuracy
from bench.hot_path import Check
from tokenlat import semconv
from tokenlat.buckets import LATENCY_METRICS


@pytest.fixture(scope="module")
def result() -> accuracy.Result:
    return accuracy.run(values=2000)


def test_emulations_reproduce_prometheus_own_test_expectations() -> None:
    checks = accuracy.check_emulations()
    assert len(checks) == 2
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_widest_step_covers_the_buckets_that_hold_the_range() -> None:
    bounds = (1.0, 2.0, 4.0, 8.0)
    assert accuracy._widest_step(bounds, 1.5, 5.0) == 2.0
    assert accuracy._widest_step((1.0, 1.5, 3.0), 1.2, 1.4) == 1.5
    assert accuracy._widest_step(bounds, 0.5, 5.0) == math.inf  # below the first boundary: the bucket from 0
    assert accuracy._widest_step(bounds, 1.5, 9.0) == math.inf  # above the last: +Inf


def test_small_run_passes_every_check_and_meets_its_targets(result: accuracy.Result) -> None:
    assert result.checks and result.passed, [c for c in result.checks if not c.ok]
    assert all(len(w.values) == 2000 for w in result.workloads)
    assert [ok for _, ok, _ in result.targets()] == [True, True, True]


def test_geometric_layouts_keep_their_target_inside_their_range(result: accuracy.Result) -> None:
    geometric = [lay for lay in result.built(native=False) if lay.target is not None]
    assert geometric, "no geometric layout was measured"
    for lay in geometric:
        inside = [e for e in result.estimates if e.layout == lay.name and e.promised]
        assert inside, lay.name
        assert all(abs(e.error) <= lay.target for e in inside), (lay.name, max(abs(e.error) for e in inside))


def test_semconv_misses_ttft_p99_by_far(result: accuracy.Result) -> None:
    p99 = result.estimate("semconv", "TTFT", 0.99)
    assert p99.error > 0.2  # the conventions' (0.25, 0.5] bucket: linear interpolation across a factor of 2
    assert not p99.promised


def test_native_scale_6_within_its_bucket_width(result: accuracy.Result) -> None:
    mine = [e for e in result.estimates if e.layout == "native scale 6"]
    assert len(mine) == len(result.workloads) * len(accuracy.QUANTILES)
    assert all(abs(e.error) <= 0.011 for e in mine), max(abs(e.error) for e in mine)


def test_series_cost(result: accuracy.Result) -> None:
    by_name = {lay.name: lay for lay in result.layouts}
    metrics = [spec.name for spec in LATENCY_METRICS.values()]
    semconv_series = sum(len(spec.buckets) + 3 for spec in LATENCY_METRICS.values())
    assert sum(by_name["semconv"].series(m) for m in metrics) == semconv_series
    assert sum(by_name["native scale 6"].series(m) for m in metrics) == 4
    rows = {row[0]: row for row in accuracy.cost_rows(result)}
    assert rows["semconv"][-2:] == (f"{semconv_series:,}", "1.00")
    assert rows["native scale 8"][-2] == "4"
    # A layout BucketLayout refuses is listed as refused, with its reason in the notes, not silently dropped.
    for lay in result.layouts:
        if lay.refused is not None:
            assert rows[lay.name][2] == "refused"
            assert any(lay.refused in line for line in accuracy.notes(result))
        else:
            assert lay.native or set(lay.bounds) == set(metrics)


def test_a_layout_wider_than_its_target_misses_both_verdicts(result: accuracy.Result) -> None:
    # The conventions' TTFT boundaries, claimed to hold 5%: the verdicts must say they do not.
    ttft = semconv.TTFT_SPEC.name
    fake = accuracy.Layout("fake 5%", "", bounds={ttft: semconv.TTFT_BUCKETS}, target=0.05, ranges={ttft: (0.02, 30.0)})
    workloads = [w for w in result.workloads if w.metric is semconv.TTFT_SPEC]
    estimates, _ = accuracy.evaluate(workloads, [fake])
    judged = dataclasses.replace(result, workloads=workloads, layouts=[fake], estimates=estimates)
    steps, quantiles, _ = judged.targets()
    assert not steps[1] and "fake 5% 150.000%" in steps[2]  # (0.1, 0.25]
    assert not quantiles[1]


def test_main_writes_the_figures_between_the_markers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "accuracy.md"
    doc.write_text(
        f"# Accuracy\n\nintro kept\n\n{accuracy.BEGIN}\nSTALE FIGURES\n{accuracy.END}\n\n## After\n\nkept too\n"
    )
    assert accuracy.main(["--values", "500", "--markdown", str(doc)]) == 0

    text = doc.read_text()
    assert text.startswith("# Accuracy\n\nintro kept\n\n")
    assert text.endswith(f"{accuracy.END}\n\n## After\n\nkept too\n")
    figures = text.split(accuracy.BEGIN, 1)[1].split(accuracy.END, 1)[0]
    assert "STALE FIGURES" not in figures
    assert "`python -m bench.accuracy --values 500 --seed 1`" in figures
    assert "| " + " | ".join(accuracy.COST_HEADERS) + " |" in figures
    assert "| " + " | ".join(accuracy.VERSION_HEADERS) + " |" in figures
    assert "| semconv | " in figures and "| native scale 6 | " in figures
    assert "**FAILED**" not in figures
    # Whether each target was met is computed and written, either way.
    assert figures.count("every geometric layout's quantiles within its target inside its range") == 1
    assert figures.count("native at scale >= 6 within 2%") == 1

    out = capsys.readouterr()
    assert "Largest |error| per layout and workload" in out.out
    assert "accuracy: figures written to" in out.err  # progress goes to stderr


def test_a_failed_check_fails_loudly_and_writes_nothing(
    result: accuracy.Result, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = dataclasses.replace(result, checks=[*result.checks, Check("an answer off its bucket", False, "1")])
    monkeypatch.setattr(accuracy, "run", lambda *args, **kwargs: broken)
    doc = tmp_path / "accuracy.md"
    assert accuracy.main(["--values", "500", "--markdown", str(doc)]) == 1
    assert not doc.exists()
    assert "[FAILED] an answer off its bucket" in capsys.readouterr().out
