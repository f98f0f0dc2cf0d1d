"""The shared statistics: true quantiles, buckets and the emulations of Prometheus' histogram_quantile (classic,
and native in both the versions verify runs against), on values worked out by hand."""

from __future__ import annotations

import math

import pytest

from tokenlat import semconv
from tokenlat.histograms import EXPONENTIAL_SCALE, ZERO, MetricStore, RequestGaps
from tokenlat.stream import RequestTiming
from tokenlat_cli.verify.statistics import (
    Recorded,
    bucket_of,
    dense_counts,
    exponential_bucket_of,
    histogram_quantile,
    native_bound,
    native_counts,
    native_quantile,
    native_quantile_linear,
    recorded_histograms,
    true_quantile,
)

TTFT = semconv.TTFT_SPEC


def test_true_quantile_is_nearest_rank() -> None:
    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert true_quantile(values, 0.5) == 3.0
    assert true_quantile(values, 0.9) == 5.0
    assert true_quantile(values, 0.2) == 1.0
    assert true_quantile(values, 0.21) == 2.0


def test_bucket_of_uses_upper_inclusive_bounds() -> None:
    bounds = (0.1, 0.25, 0.5)
    assert bucket_of(0.05, bounds) == (0.0, 0.1)
    assert bucket_of(0.1, bounds) == (0.0, 0.1)
    assert bucket_of(0.2, bounds) == (0.1, 0.25)
    assert bucket_of(0.9, bounds) == (0.5, math.inf)


def test_recorded_native_answers_take_the_bucket_of_the_rank_and_the_next_populated_one() -> None:
    store = MetricStore(exponential=True)
    for ttft in (0.1, 0.2, 0.4, 0.8):
        store.record_request({}, RequestTiming(start=0.0, first_token=ttft, end=1.0), RequestGaps(), None)
    recorded = recorded_histograms(store)[TTFT.name]
    lower, _ = exponential_bucket_of(0.2, EXPONENTIAL_SCALE)
    _, next_upper = exponential_bucket_of(0.4, EXPONENTIAL_SCALE)
    low, high = recorded.answers(0.5)  # rank 2 ends the bucket of 0.2: Prometheus 3 may answer from 0.4's
    assert low == pytest.approx(lower) and high == pytest.approx(next_upper)


def test_histogram_quantile_interpolates_like_prometheus() -> None:
    bounds = (1.0, 2.0, 4.0)
    # 4 values: two in (0, 1], one in (1, 2], one in (2, 4]
    values = [0.5, 0.7, 1.5, 3.0]
    assert histogram_quantile(0.5, values, bounds) == pytest.approx(1.0)  # rank 2 ends bucket 1
    assert histogram_quantile(0.25, values, bounds) == pytest.approx(0.5)  # rank 1 of 2 in (0, 1]
    assert histogram_quantile(0.625, values, bounds) == pytest.approx(1.5)  # rank 2.5 halfway in (1, 2]
    assert histogram_quantile(0.99, [9.0], bounds) == 4.0  # +Inf bucket: the last finite bound


def test_exponential_bucket_of() -> None:
    lower, upper = exponential_bucket_of(1.0, 3)
    assert lower < 1.0 <= upper and upper == pytest.approx(1.0) and lower == pytest.approx(2 ** (-1 / 8))
    lower, upper = exponential_bucket_of(0.13, EXPONENTIAL_SCALE)
    assert upper / lower - 1 < 0.011  # scale 6: the 1.1% native histograms promise


def test_true_quantile_of_many_and_of_none() -> None:
    values = [float(v) for v in range(1, 101)]
    assert true_quantile(values, 0.5) == 50.0
    assert true_quantile(values, 0.99) == 99.0
    assert true_quantile(values, 1.0) == 100.0
    assert true_quantile([3.0], 0.01) == 3.0
    assert math.isnan(true_quantile([], 0.5))  # nothing measured: no quantile, not an IndexError


def test_classic_quantile_interpolates_linearly_inside_the_bucket() -> None:
    # Buckets (0, 1], (1, 2], (2, 4], (4, +Inf] holding 1, 2, 4 and 1 of 8 values.
    values = [0.5, 1.5, 1.5, 3.0, 3.0, 3.0, 3.0, 10.0]
    bounds = (1.0, 2.0, 4.0)
    assert histogram_quantile(0.1, values, bounds) == pytest.approx(0.8)  # rank 0.8 of 1 in (0, 1]
    assert histogram_quantile(0.375, values, bounds) == pytest.approx(2.0)  # rank 3: the end of (1, 2]
    assert histogram_quantile(0.5, values, bounds) == pytest.approx(2.5)  # rank 4: 1 of 4 into (2, 4]
    assert histogram_quantile(0.99, values, bounds) == 4.0  # +Inf: the last finite boundary


def test_native_quantile_interpolates_exponentially_and_counts_the_upper_half_from_the_top() -> None:
    # Scale 0, OTLP indexes: 0 is (1, 2], 1 is (2, 4], 3 is (8, 16]; 8 values.
    counts = {0: 1, 1: 3, 3: 4}
    # q < 0.5, from the bottom: rank 2 is 1 of 3 into (2, 4], a third of the way in log2.
    assert native_quantile(0.25, counts, 0) == pytest.approx(2 ** (4 / 3))
    # q >= 0.5, from the top: rank 4 ties with the top of (2, 4]; counted from the top it is the start of (8, 16].
    assert native_quantile(0.5, counts, 0) == pytest.approx(8.0)
    assert native_quantile_linear(0.5, counts, 0) == pytest.approx(4.0)  # Prometheus 2.42, from the bottom
    # Half-way into (8, 16]: 2**3.5 in 3.x, the arithmetic middle in 2.42.
    assert native_quantile(0.75, counts, 0) == pytest.approx(2**3.5)
    assert native_quantile_linear(0.75, counts, 0) == pytest.approx(12.0)
    assert native_quantile(1.0, counts, 0) == pytest.approx(16.0)
    assert math.isnan(native_quantile(0.5, {}, 0))
    assert math.isnan(native_quantile_linear(0.5, {}, 0))


@pytest.mark.parametrize("scale", range(-4, 9))
def test_native_bound_is_two_to_the_index_over_two_to_the_scale_at_every_scale(scale: int) -> None:
    # The library's range of scales (-4..8, as Prometheus' native histograms); Prometheus' own computation.
    for index in (-37, -1, 0, 1, 5, 30):
        assert native_bound(index, scale) == pytest.approx(2 ** (index * 2.0**-scale), rel=1e-14)
    lower, upper = exponential_bucket_of(1.5, scale)
    assert lower < 1.5 <= upper


def test_native_counts_and_dense_counts_give_index_to_count() -> None:
    assert native_counts([1.5, 1.7, 3.0, 0.0], 0) == {0: 2, 1: 1, ZERO: 1}
    assert dense_counts(9, [1, 0, 2]) == {9: 1, 11: 2}


def test_recorded_classic_answers_are_the_interpolation_itself() -> None:
    recorded = Recorded({0: 1, 1: 2, 2: 1}, (1.0, 2.0, 4.0), EXPONENTIAL_SCALE)
    assert recorded.answers(0.5) == (pytest.approx(1.5), pytest.approx(1.5))
    with pytest.raises(ValueError, match="no observations"):
        Recorded({}, None, EXPONENTIAL_SCALE).answers(0.5)
