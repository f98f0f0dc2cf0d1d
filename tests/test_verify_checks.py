"""The comparisons verify makes and the report it prints, on hand-made numbers."""

from __future__ import annotations

import json
import math

import pytest

from tokenlat import semconv
from tokenlat.stream import RequestTiming
from tokenlat_cli.verify import checks
from tokenlat_cli.verify.report import Report


def test_true_quantile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert checks.true_quantile(values, 0.5) == 3.0
    assert checks.true_quantile(values, 0.9) == 5.0
    assert checks.true_quantile(values, 0.2) == 1.0
    assert checks.true_quantile(values, 0.21) == 2.0


def test_bucket_of_uses_upper_inclusive_bounds() -> None:
    bounds = (0.1, 0.25, 0.5)
    assert checks.bucket_of(0.05, bounds) == (0.0, 0.1)
    assert checks.bucket_of(0.1, bounds) == (0.0, 0.1)
    assert checks.bucket_of(0.2, bounds) == (0.1, 0.25)
    assert checks.bucket_of(0.9, bounds) == (0.5, math.inf)


def test_quantile_check_passes_within_the_bucket_and_fails_outside() -> None:
    truths = [0.3] * 10  # all in TTFT bucket (0.25, 0.5]
    ok = checks.quantile_check(semconv.TTFT_SPEC, 0.5, truths, 0.45)
    assert ok.passed and ok.tolerance == pytest.approx(0.25) and ok.error == pytest.approx(0.15)
    bad = checks.quantile_check(semconv.TTFT_SPEC, 0.5, truths, 0.9)
    assert not bad.passed and "bucket (0.25, 0.5]" in bad.detail
    missing = checks.quantile_check(semconv.TTFT_SPEC, 0.5, truths, None)
    assert not missing.passed and missing.detail == "no data in Prometheus"
    nan = checks.quantile_check(semconv.TTFT_SPEC, 0.5, truths, math.nan)
    assert not nan.passed


def test_quantile_beyond_the_last_bucket_cannot_pass() -> None:
    beyond = semconv.TTFT_SPEC.buckets[-1] * 2
    assert not checks.quantile_check(semconv.TTFT_SPEC, 0.5, [beyond], beyond).passed


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = (1.0, 2.0, 4.0)
    # 4 values: two in (0, 1], one in (1, 2], one in (2, 4]
    values = [0.5, 0.7, 1.5, 3.0]
    assert checks.histogram_quantile(0.5, values, bounds) == pytest.approx(1.0)  # rank 2 ends bucket 1
    assert checks.histogram_quantile(0.25, values, bounds) == pytest.approx(0.5)  # rank 1 of 2 in (0, 1]
    assert checks.histogram_quantile(0.625, values, bounds) == pytest.approx(1.5)  # rank 2.5 halfway in (1, 2]
    assert checks.histogram_quantile(0.99, [9.0], bounds) == 4.0  # +Inf bucket: the last finite bound


def test_quantile_detail_names_what_a_lossless_histogram_answers() -> None:
    check = checks.quantile_check(semconv.TTFT_SPEC, 0.5, [0.3, 0.4], 0.375)
    assert check.detail == "bucket (0.25, 0.5]; a lossless histogram answers 0.375"


def test_count_check_is_exact() -> None:
    assert checks.count_check("n", 300, 300.0).passed
    assert not checks.count_check("n", 300, 299.0).passed
    assert not checks.count_check("n", 300, None).passed


def test_id_label_check() -> None:
    assert checks.id_label_check(["__name__", "gen_ai_request_model", "le", "job", "instance"]).passed
    failed = checks.id_label_check(["le", "request_id", "user_id", "gen_ai_request_model", "enduser_id"])
    assert not failed.passed and failed.observed == "enduser_id, request_id, user_id"


def test_truth_series_leaves_undefined_tpot_out() -> None:
    one_token = RequestTiming(start=0.0, first_token=0.5, end=0.5, output_tokens=1)
    three = RequestTiming(start=0.0, first_token=0.25, end=1.25, output_tokens=3)
    series = checks.truth_series([one_token, three])
    assert series[semconv.TIME_TO_FIRST_TOKEN] == [0.5, 0.25]
    assert series[semconv.TIME_PER_OUTPUT_TOKEN] == [0.5]
    assert series[semconv.REQUEST_DURATION] == [0.5, 1.25]


def test_wait_for_value_polls_until_expected() -> None:
    readings = iter([None, 1.0, 2.0, 3.0])
    assert checks.wait_for_value(lambda: next(readings), 3.0, timeout=5, interval=0) == 3.0


def test_wait_for_value_returns_last_value_at_deadline() -> None:
    assert checks.wait_for_value(lambda: 1.0, 2.0, timeout=0, interval=0) == 1.0


def test_report_table_and_json() -> None:
    report = Report(profile="local", settings={"requests": 2})
    report.checks.append(checks.count_check("requests", 2, 2))
    report.checks.append(checks.quantile_check(semconv.TTFT_SPEC, 0.5, [200.0], 150.0))
    table = report.table()
    lines = table.splitlines()
    assert lines[0].split() == ["check", "expected", "observed", "error", "tolerance", "result", "detail"]
    assert "PASS" in lines[2] and "FAIL" in lines[3] and "inf" in lines[3]
    assert lines[-1] == "verify FAILED: 1 of 2 checks passed"
    payload = json.loads(report.to_json())
    assert payload["passed"] is False
    assert payload["checks"][1]["tolerance"] == "inf"
    assert [c["passed"] for c in payload["checks"]] == [True, False]


def test_empty_report_does_not_pass() -> None:
    assert not Report(profile="local", settings={}).passed


def test_queries_for_classic_and_native_histograms() -> None:
    classic, native = checks.Queries(native=False), checks.Queries(native=True)
    ttft = semconv.TTFT_SPEC
    assert classic.count(ttft) == "sum(gen_ai_server_time_to_first_token_seconds_count)"
    assert native.count(ttft) == "histogram_count(sum(gen_ai_server_time_to_first_token_seconds))"
    assert classic.sum(semconv.TOKEN_USAGE_SPEC, 'a="b"') == 'sum(gen_ai_client_token_usage_sum{a="b"})'
    assert native.sum(semconv.TOKEN_USAGE_SPEC) == "histogram_sum(sum(gen_ai_client_token_usage))"
    assert classic.quantile(ttft, 0.9) == (
        "histogram_quantile(0.9, sum by (le) (gen_ai_server_time_to_first_token_seconds_bucket))"
    )
    assert native.quantile(ttft, 0.9) == "histogram_quantile(0.9, sum(gen_ai_server_time_to_first_token_seconds))"


def test_native_tolerance_is_the_exponential_bucket_width() -> None:
    lower, upper = checks.exponential_bucket_of(1.0, 3)
    assert lower < 1.0 <= upper and upper == pytest.approx(1.0) and lower == pytest.approx(2 ** (-1 / 8))
    check = checks.quantile_check(semconv.TTFT_SPEC, 0.5, [0.13] * 3, 0.131, native=True)
    assert check.passed and check.tolerance < 0.13 * 0.1
    assert "relative error +0.8%" in check.detail
    assert not checks.quantile_check(semconv.TTFT_SPEC, 0.5, [0.13] * 3, 0.16, native=True).passed


def test_id_value_check_finds_a_leaked_id_in_any_label() -> None:
    ids = {"user-7@example.com", "req-000007-55433"}
    clean = checks.id_value_check({"gen_ai_request_model": ["m-1"], "job": ["tokenlat-verify"]}, ids)
    assert clean.passed and clean.observed == 0 and clean.detail == "2 label values checked against 2 ids"
    leaked = checks.id_value_check({"job": ["x"], "note": ["from user-7@example.com"]}, ids)
    assert not leaked.passed and leaked.observed == 1 and leaked.detail == "note=from user-7@example.com"
