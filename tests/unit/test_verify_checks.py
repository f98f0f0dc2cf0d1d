"""The comparisons verify makes and the report it prints, on hand-made numbers."""

from __future__ import annotations

import json
import math

import pytest

from tokenlat import semconv
from tokenlat.buckets import BucketLayout
from tokenlat.histograms import MetricStore, RequestGaps
from tokenlat.stream import RequestTiming
from tokenlat_cli.verify import checks
from tokenlat_cli.verify.report import Report
from tokenlat_cli.verify.statistics import histogram_quantile, recorded_histograms, true_quantile_interval

DEFAULT = BucketLayout()
TTFT = semconv.TTFT_SPEC


def test_truth_row_judges_the_relative_error_against_the_stated_target() -> None:
    truths = [0.3] * 10
    ok = checks.truth_check(TTFT, 0.5, truths, 0.31, DEFAULT)  # classic, default layout: 5%
    assert ok.passed and ok.error == pytest.approx(1 / 30) and ok.tolerance == 0.05
    assert "relative error +3.33%" in ok.detail and "target 5%" in ok.detail
    assert not checks.truth_check(TTFT, 0.5, truths, 0.33, DEFAULT).passed  # +10%
    assert checks.truth_check(TTFT, 0.5, truths, 0.3045, None).passed  # native: 2%
    native_off = checks.truth_check(TTFT, 0.5, truths, 0.309, None)
    assert not native_off.passed and native_off.tolerance == checks.NATIVE_TARGET
    for observed in (None, math.nan):
        missing = checks.truth_check(TTFT, 0.5, truths, observed, DEFAULT)
        assert not missing.passed and missing.detail == "no data in Prometheus"


def test_truth_row_takes_every_true_quantile_when_the_rank_is_whole() -> None:
    # p50 of 4 values: 2 of 4 at or below, 2 at or above, anything from the 2nd to the 3rd value is a median; and
    # Prometheus 3 answers from the 3rd value's bucket then.
    truths = [0.1, 0.2, 0.4, 0.8]
    assert true_quantile_interval(truths, 0.5) == (0.2, 0.4)
    assert true_quantile_interval(truths, 0.6) == (0.4, 0.4)
    inside = checks.truth_check(TTFT, 0.5, truths, 0.39, None)
    assert inside.passed and inside.error == 0 and "every value in [0.2, 0.4] is a true p50" in inside.detail
    beyond = checks.truth_check(TTFT, 0.5, truths, 0.41, None)
    assert not beyond.passed and beyond.error == pytest.approx(0.025)


def test_truth_row_fails_where_the_layout_promises_nothing() -> None:
    # The conventions' buckets promise no accuracy: even a close answer does not pass as "within target".
    semconv_row = checks.truth_check(TTFT, 0.5, [0.3] * 10, 0.3, BucketLayout.semconv())
    assert not semconv_row.passed and "promise no accuracy" in semconv_row.detail and semconv_row.tolerance == "none"
    # Outside the operating range (TTFT 0.02-30 s by default) neither.
    beyond = checks.truth_check(TTFT, 0.5, [50.0], 50.0, DEFAULT)
    assert not beyond.passed and "outside the layout's range 0.02-30" in beyond.detail


def test_pipeline_row_in_process_is_exactly_what_the_library_sent() -> None:
    store = MetricStore(layout=DEFAULT)
    for ttft in (0.11, 0.12, 0.125, 0.3, 0.31):
        timing = RequestTiming(start=0.0, first_token=ttft, end=ttft + 1.0, output_tokens=3)
        store.record_request({}, timing, RequestGaps(), None)
    recorded = recorded_histograms(store)[TTFT.name]
    sent = histogram_quantile(0.9, [0.11, 0.12, 0.125, 0.3, 0.31], DEFAULT.bounds(TTFT.name))
    assert recorded.answers(0.9) == (sent, sent)
    row = checks.pipeline_check(TTFT, 0.9, sent, recorded)  # the truth plays no part
    assert row.passed and row.tolerance == "what was sent" and "the 5 observations" in row.detail
    assert not checks.pipeline_check(TTFT, 0.9, sent * 1.0001, recorded).passed
    assert not checks.pipeline_check(TTFT, 0.9, None, recorded).passed


def test_quantile_checks_give_both_rows_in_process_and_the_truth_row_through_the_sidecar() -> None:
    store = MetricStore(layout=DEFAULT)
    store.record_request({}, RequestTiming(start=0.0, first_token=0.3, end=1.0), RequestGaps(), None)
    recorded = recorded_histograms(store)[TTFT.name]
    rows = checks.quantile_checks(TTFT, 0.95, [0.3] * 20, 0.3, DEFAULT, recorded)
    assert [row.name for row in rows] == [
        "gen_ai_server_time_to_first_token_seconds p95 vs the truth",
        "gen_ai_server_time_to_first_token_seconds p95 as the buckets allow",
    ]
    assert rows[0].tolerance == 0.05
    assert 0.95 in checks.QUANTILES
    # The sidecar measured: every value between the server's writes (0.29) and the client's reads (0.32) is one it
    # can have read, and the native histograms' own target applies from there.
    bounds = ([0.29] * 100, [0.32] * 100)
    (sidecar,) = checks.quantile_checks(TTFT, 0.99, [0.3] * 100, 0.319, None, bounds=bounds)
    assert sidecar.passed and sidecar.error == 0 and sidecar.tolerance == checks.NATIVE_TARGET
    assert "measured through the sidecar" in sidecar.detail and "[0.29, 0.32]" in sidecar.detail
    above = checks.quantile_checks(TTFT, 0.99, [0.3] * 100, 0.33, None, bounds=bounds)[0]
    assert not above.passed and above.error == pytest.approx(0.01 / 0.32)
    below = checks.quantile_checks(TTFT, 0.99, [0.3] * 100, 0.28, None, bounds=bounds)[0]
    assert not below.passed and below.error == pytest.approx(-0.01 / 0.29)


def test_count_check_is_exact() -> None:
    assert checks.count_check("n", 300, 300.0).passed
    assert not checks.count_check("n", 300, 299.0).passed
    assert not checks.count_check("n", 300, None).passed


def test_id_label_check() -> None:
    assert checks.id_label_check(["__name__", "gen_ai_request_model", "le", "job", "instance"]).passed
    failed = checks.id_label_check(["le", "request_id", "user_id", "gen_ai_request_model", "enduser_id"])
    assert not failed.passed and failed.observed == "enduser_id, request_id, user_id"


def test_report_table_and_json() -> None:
    report = Report(profile="local", settings={"requests": 2})
    report.checks.append(checks.count_check("requests", 2, 2))
    report.checks.append(checks.truth_check(TTFT, 0.5, [200.0], 150.0, BucketLayout.semconv()))
    table = report.table()
    lines = table.splitlines()
    assert lines[0].split() == ["check", "expected", "observed", "error", "tolerance", "result", "detail"]
    assert "PASS" in lines[2] and "FAIL" in lines[3] and "none" in lines[3]
    assert lines[-1] == "verify FAILED: 1 of 2 checks passed"
    payload = json.loads(report.to_json())
    assert payload["passed"] is False
    assert payload["checks"][1]["tolerance"] == "none"
    assert [c["passed"] for c in payload["checks"]] == [True, False]


def test_empty_report_does_not_pass() -> None:
    assert not Report(profile="local", settings={}).passed


def test_id_value_check_finds_a_leaked_id_in_any_label() -> None:
    ids = {"user-7@example.com", "req-000007-55433"}
    clean = checks.id_value_check({"gen_ai_request_model": ["m-1"], "job": ["tokenlat-verify"]}, ids)
    assert clean.passed and clean.observed == 0 and clean.detail == "2 label values checked against 2 ids"
    leaked = checks.id_value_check({"job": ["x"], "note": ["from user-7@example.com"]}, ids)
    assert not leaked.passed and leaked.observed == 1 and leaked.detail == "note=from user-7@example.com"
