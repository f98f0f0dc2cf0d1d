"""Bucket layouts: the accuracy promise (any data, any quantile, within the target inside the range), the spec
grammar of TOKENLAT_BUCKETS, and the errors for layouts that cannot work."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from tokenlat import semconv
from tokenlat.buckets import (
    DEFAULT_RANGES,
    LATENCY_METRICS,
    MAX_BUCKETS,
    BucketLayout,
    geometric_bounds,
)
from tokenlat.configure import ConfigurationError, configure
from tokenlat_cli.verify.statistics import histogram_quantile, true_quantile


@given(
    low=st.floats(1e-4, 1.0),
    span=st.floats(1.5, 1e4),
    target=st.sampled_from([0.01, 0.02, 0.05, 0.1, 0.25]),
)
# Found by hypothesis: the last step reached 1502.25 unrounded, and 1502 rounded, short of the range's top.
@example(low=0.5, span=3004.5, target=0.1)
def test_every_step_is_within_the_target(low: float, span: float, target: float) -> None:
    try:
        bounds = geometric_bounds(low, low * span, target, (low * 1.3,))
    except ValueError as exc:
        assert "more than" in str(exc)  # only the bucket cap may refuse a sane range
        return
    assert list(bounds) == sorted(set(bounds))
    assert bounds[0] < low and bounds[-1] >= low * span * (1 - 1e-4)
    assert max(b / a for a, b in itertools.pairwise(bounds)) <= 1 + target
    assert low * 1.3 in bounds


@settings(max_examples=200, deadline=None)
@given(
    values=st.lists(st.floats(0.02, 30.0), min_size=1, max_size=400),
    q=st.sampled_from([0.5, 0.9, 0.95, 0.99, 0.999]),
)
def test_prometheus_quantiles_stay_within_the_target_inside_the_range(values: list[float], q: float) -> None:
    # The promise itself, for any data: what histogram_quantile answers (emulated exactly) is within 5% of the
    # nearest-rank truth, for values inside the default TTFT range.
    bounds = BucketLayout().bounds(semconv.TIME_TO_FIRST_TOKEN)
    truth = true_quantile(values, q)
    answer = histogram_quantile(q, values, bounds)
    assert abs(answer - truth) / truth <= 0.05


def test_the_conventions_buckets_break_that_promise() -> None:
    # Why the default changed: with the advisory buckets, the same check fails by far.
    values = [0.27] + [0.11] * 99
    bounds = semconv.TTFT_BUCKETS
    assert abs(histogram_quantile(0.99, values, bounds) - true_quantile(values, 0.99)) / 0.27 > 0.3


def test_the_default_layout() -> None:
    layout = BucketLayout()
    assert layout.target == 0.05 and str(layout).startswith("geometric:0.05;")
    assert 2.0 in layout.bounds(semconv.TIME_TO_FIRST_TOKEN)  # the alert threshold is a boundary
    for name, spec in LATENCY_METRICS.items():
        bounds = layout.bounds(spec.name)
        low, high = DEFAULT_RANGES[name]
        assert bounds[0] <= low and bounds[-1] >= high and len(bounds) <= MAX_BUCKETS
        assert layout.promised_range(spec.name) == (low, high)
    assert layout.bounds(semconv.TOKEN_USAGE) == semconv.TOKEN_USAGE_BUCKETS  # counts, not latency
    assert layout.promised_range(semconv.TOKEN_USAGE) is None
    semconv_layout = BucketLayout.semconv()
    assert semconv_layout.bounds(semconv.TIME_TO_FIRST_TOKEN) == semconv.TTFT_BUCKETS
    assert semconv_layout.target is None and semconv_layout.promised_range(semconv.TIME_TO_FIRST_TOKEN) is None


@pytest.mark.parametrize(
    "spec",
    ["semconv", "geometric:0.02;ttft=0.05-10;duration=0.1-100;itl=0.001-1;ttft@2;ttft@5", "geometric:0.1"],
)
def test_spec_round_trip(spec: str) -> None:
    layout = BucketLayout.parse(spec)
    assert BucketLayout.parse(str(layout)) == layout


def test_spec_details() -> None:
    layout = BucketLayout.parse(" geometric : 0.02 ; ttft = 0.05-10 ; duration=0.1-100; ttft@2 ; ttft@5 ")
    assert layout.target == 0.02 and layout.ranges["ttft"] == (0.05, 10.0)
    assert layout.ranges["itl"] == DEFAULT_RANGES["itl"]
    assert dict(layout.thresholds) == {"ttft": (2.0, 5.0)}
    assert {2.0, 5.0} <= set(layout.bounds(semconv.TIME_TO_FIRST_TOKEN))
    assert BucketLayout.parse("geometric") == BucketLayout()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("linear:0.05", "must start with semconv or geometric"),
        ("semconv;ttft=1-2", "semconv takes no target"),
        ("geometric:0", "ttft: target 0: must be between 0 and 1"),
        ("geometric:1.5", "target 1.5: must be between 0 and 1"),
        ("geometric:abc", "target: 'abc' is not a number"),
        ("geometric;ttft=10-1", "ttft: range 10-1: needs 0 < low < high"),
        ("geometric;ttft=0-1", "needs 0 < low < high"),
        ("geometric;ttft=1", "a range is METRIC=LOW-HIGH"),
        ("geometric;queue=1-2", "'queue' is not one of ttft, tpot, duration, itl"),
        ("geometric:0.001;ttft=0.001-100", "more than 400: narrow the range or loosen the target"),
        ("geometric;ttft@-2", "threshold -2.0: must be a positive number"),
        ("geometric;ttft@inf", "is not a finite number"),
        ("geometric;ttft", "expected METRIC=LOW-HIGH or METRIC@VALUE"),
    ],
)
def test_bad_specs_say_what_is_wrong(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        BucketLayout.parse(spec)


def test_configure_takes_the_layout_from_the_environment_and_names_it_when_bad() -> None:
    telemetry = configure(environ={"TOKENLAT_BUCKETS": "semconv"}, export_interval_millis=3_600_000)
    try:
        assert telemetry.metrics.store.layout == BucketLayout.semconv()
    finally:
        telemetry.shutdown()
    with pytest.raises(ConfigurationError, match="TOKENLAT_BUCKETS: 'linear'"):
        configure(environ={"TOKENLAT_BUCKETS": "linear"})
    assert not math.isnan(DEFAULT_RANGES["ttft"][0])
