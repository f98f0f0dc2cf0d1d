"""The statistics verify and the benchmarks judge by: true quantiles, buckets, and Prometheus' histogram_quantile.

One module, so that verify's checks and the benchmarks (bench/accuracy.py, bench/sidecar.py) cannot disagree about
what the truth is or about what Prometheus answers for a set of bucket counts:

- the truth: the nearest-rank quantile of the exact values (:func:`true_quantile`), and the interval of values that
  are all q-quantiles when the rank falls exactly between two values (:func:`true_quantile_interval`);
- buckets: which explicit (:func:`bucket_of`) or base-2 exponential (:func:`exponential_bucket_of`, with
  :func:`native_bound` computing a boundary as Prometheus does) bucket holds a value;
- Prometheus' histogram_quantile, emulated: over classic (explicit) buckets (:func:`histogram_quantile`,
  :func:`quantile_of_counts`), the same in Prometheus 2.x and 3.x; over native (exponential) buckets, where the two
  versions differ and both are run by verify (Debian's 2.42 and 3.16): :func:`native_quantile` (3.16, exponential
  interpolation, the upper half counted from the top) and :func:`native_quantile_linear` (2.42, linear);
- :class:`Recorded`: the bucket counts the library sent, and where an answer over exactly them must lie whichever
  of the two versions answers.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from tokenlat.histograms import ZERO, MetricStore, exponential_index

# --- the truth ------------------------------------------------------------------------------------------------


def true_quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile: the smallest value with at least q of all values at or below it; NaN when there
    are no values (a run that measured nothing has no quantile, and must not fail with an IndexError instead)."""
    if not values:
        return math.nan
    ordered = sorted(values)  # linear when they are sorted already, as the benchmarks keep them
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[rank - 1]


def true_quantile_interval(values: Sequence[float], q: float) -> tuple[float, float]:
    """The values that are all q-quantiles: the nearest rank alone, or, when q x n is a whole number r, every value
    from the r-th to the (r+1)-th (half the values are at or below each, and half at or above). Prometheus 3 answers
    from the (r+1)-th value's bucket then, for quantiles >= 0.5."""
    ordered = sorted(values)
    n = len(ordered)
    exact = q * n
    rank = max(1, math.ceil(exact))
    if abs(exact - round(exact)) < 1e-9 and rank < n:
        return ordered[rank - 1], ordered[rank]
    return ordered[rank - 1], ordered[rank - 1]


# --- buckets --------------------------------------------------------------------------------------------------


def bucket_of(value: float, bounds: Sequence[float]) -> tuple[float, float]:
    """The (lower, upper] bucket holding ``value``; upper is inf beyond the last boundary."""
    i = bisect.bisect_left(bounds, value)
    lower = bounds[i - 1] if i > 0 else 0.0
    upper = bounds[i] if i < len(bounds) else math.inf
    return lower, upper


def native_bound(index: int, scale: int) -> float:
    """2**(index / 2**scale) computed as Prometheus' getBoundExponential does (model/histogram/generic.go): for
    scales 0..8 a fraction in [0.5, 1) from a per-scale table scaled by a power of two, for scales -4..-1 a power of
    two. Computing it as Prometheus does keeps comparisons with its answers exact to the last bit. Beyond the float
    range: inf, as Go's math.Ldexp."""
    if scale < 0:
        try:
            return math.ldexp(1.0, index << -scale)
        except OverflowError:
            return math.inf
    frac = 2.0 ** ((index & ((1 << scale) - 1)) / (1 << scale) - 1)
    return math.ldexp(frac, (index >> scale) + 1)


def exponential_bucket_of(value: float, scale: int) -> tuple[float, float]:
    """The base-2 exponential bucket (base**i, base**(i+1)] holding ``value`` at ``scale``."""
    index = exponential_index(scale)(value)
    return native_bound(index, scale), native_bound(index + 1, scale)


def native_counts(values: Sequence[float], scale: int) -> dict[int, int]:
    """The OTLP exponential histogram tokenlat exports for ``values`` at ``scale``: count per bucket index (values
    at or below 0 under the index ``tokenlat.histograms.ZERO``)."""
    index = exponential_index(scale)
    counts: dict[int, int] = {}
    for value in values:
        i = index(value)
        counts[i] = counts.get(i, 0) + 1
    return counts


def dense_counts(offset: int, bucket_counts: Sequence[int]) -> dict[int, int]:
    """OTLP's dense form of exponential buckets (the first index, then one count per index) as index -> count, the
    form the native emulations take."""
    return {offset + i: n for i, n in enumerate(bucket_counts) if n}


# --- Prometheus' histogram_quantile ---------------------------------------------------------------------------


def histogram_quantile(q: float, values: Sequence[float], bounds: Sequence[float]) -> float:
    """What Prometheus' histogram_quantile answers for these values in these classic buckets, if nothing is lost.

    Comparing it with what Prometheus answered separates the two sources of error: the buckets' resolution
    (truth vs this) and the transport (this vs Prometheus).
    """
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    return quantile_of_counts(q, counts, bounds)


def quantile_of_counts(q: float, counts: Sequence[int], bounds: Sequence[float]) -> float:
    """Prometheus' histogram_quantile over explicit bucket counts (``counts[i]`` in ``(bounds[i-1], bounds[i]]``,
    the last one +Inf): promql BucketQuantile, linear inside the bucket, 0 as the first bucket's start, the last
    finite boundary for +Inf. Prometheus 2.x and 3.x agree on it."""
    cumulative = list(itertools.accumulate(counts))
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if b == len(bounds):
        return bounds[-1]
    start, below = (0.0, 0) if b == 0 else (bounds[b - 1], cumulative[b - 1])
    return start + (bounds[b] - start) * (rank - below) / counts[b]


def _native_buckets(
    counts: Mapping[int, float], scale: int, zero_count: float, zero_threshold: float
) -> list[tuple[float, float, float]]:
    """(lower, upper, count) in ascending order as Prometheus' AllBucketIterator yields them for a histogram with
    positive buckets only: the zero bucket first (when it counted something), then the positive buckets, the
    lowest one's lower bound raised to the zero threshold if it is below it. Empty buckets are left out: Prometheus
    3.x skips them."""
    out = [(-zero_threshold, zero_threshold, zero_count)] if zero_count > 0 else []
    for index in sorted(counts):
        if counts[index] > 0:
            # OTLP bucket i holds (base**i, base**(i+1)]: Prometheus' bucket i+1, bounds getBound(i), getBound(i+1).
            lower, upper = native_bound(index, scale), native_bound(index + 1, scale)
            out.append((max(lower, zero_threshold), upper, counts[index]))
    return out


# The two native emulations below are not duplicates: they are what two Prometheus versions answer for the same
# counts, and verify runs against both (Debian's 2.42 and 3.16). 3.x interpolates exponentially and counts the
# upper half from the top; 2.42 interpolated linearly from the bottom. They differ by up to a bucket's width.


def native_quantile(
    q: float, counts: Mapping[int, float], scale: int, zero_count: float = 0, zero_threshold: float = 0.0
) -> float:
    """What Prometheus 3.16 answers: promql.HistogramQuantile (promql/quantile.go, v0.316.0) for a standard
    exponential schema with positive observations (no negative buckets, no NaN).

    ``counts`` maps OTLP bucket indexes (as tokenlat.histograms.exponential_index assigns them) to counts. The
    rank is counted from the bottom for q < 0.5 and from the top for q >= 0.5 (Prometheus does so for float
    precision; on an exact tie it makes a difference: the answer is then the lower bound of the next populated
    bucket). Inside a bucket the answer is interpolated exponentially: the fraction of the bucket's count below
    the rank is taken as the same fraction of the bucket's width in log2. In the zero bucket it is linear, from 0.
    """
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    total = float(zero_count + sum(counts.values()))
    if total == 0 or math.isnan(q):
        return math.nan
    buckets = _native_buckets(counts, scale, zero_count, zero_threshold)
    forward = q < 0.5
    rank = q * total if forward else (1 - q) * total
    count = 0.0
    lower = upper = n = 0.0
    for bucket in buckets if forward else reversed(buckets):
        lower, upper, n = bucket
        count += n
        if count >= rank:
            break
    if lower < 0 < upper:
        lower = 0.0  # the zero bucket of a histogram with positive buckets only starts at 0
    count = min(count, total)
    rank = rank - (count - n) if forward else count - rank
    fraction = rank / n
    if lower <= 0 <= upper:
        return lower + (upper - lower) * fraction
    log_lower, log_upper = math.log2(lower), math.log2(upper)
    return 2.0 ** (log_lower + (log_upper - log_lower) * fraction)


def native_quantile_linear(q: float, counts: Mapping[int, float], scale: int) -> float:
    """What Prometheus 2.42 answered: promql histogramQuantile (v0.42.0): the rank counted from the bottom and
    linear interpolation inside the bucket, as for classic buckets ("TODO: Use a better estimation than linear")."""
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    total = float(sum(counts.values()))
    if total == 0 or math.isnan(q):
        return math.nan
    rank = q * total
    count = 0.0
    lower = upper = n = 0.0
    for bucket in _native_buckets(counts, scale, 0, 0.0):
        lower, upper, n = bucket
        count += n
        if count >= rank:
            break
    return lower + (upper - lower) * (rank - (count - n)) / n


# --- what the library sent ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """What the library recorded, and so sent, of one histogram: its bucket counts, every attribute set merged
    (verify's queries sum them too). ``bounds`` for explicit buckets, ``scale`` for exponential ones."""

    counts: dict[int, int]
    bounds: tuple[float, ...] | None
    scale: int

    def answers(self, q: float) -> tuple[float, float]:
        """Where Prometheus' answer lies when it holds exactly these counts: the interpolation itself for explicit
        buckets; for exponential ones, the bucket the rank falls in, through the next populated bucket (where
        Prometheus 3 answers, for quantiles >= 0.5, when the rank ends a bucket exactly). An interval rather than
        :func:`native_quantile`'s one value, because the same check must hold against Prometheus 2.42 too."""
        if self.bounds is not None:
            answer = quantile_of_counts(q, [self.counts.get(i, 0) for i in range(len(self.bounds) + 1)], self.bounds)
            return answer, answer
        used = sorted(i for i, n in self.counts.items() if n)
        rank = q * sum(self.counts[i] for i in used)
        cumulative = 0
        for position, index in enumerate(used):
            cumulative += self.counts[index]
            if cumulative >= rank:
                following = used[min(position + 1, len(used) - 1)]
                return self._lower(index), self._lower(following + 1)
        raise ValueError("no observations")

    def _lower(self, index: int) -> float:
        return 0.0 if index == ZERO else native_bound(index, self.scale)


def merge_recorded(parts: Sequence[Mapping[str, Recorded]]) -> dict[str, Recorded]:
    """What several services recorded, per histogram, as one: what a query summing over them answers from. Their
    bucket layouts must agree (one profile's services do); a ValueError names the metric where they do not."""
    merged: dict[str, Recorded] = {}
    for part in parts:
        for name, recorded in part.items():
            into = merged.get(name)
            if into is None:
                merged[name] = Recorded(dict(recorded.counts), recorded.bounds, recorded.scale)
                continue
            if (into.bounds, into.scale) != (recorded.bounds, recorded.scale):
                raise ValueError(f"{name}: the services recorded different buckets, which no sum can merge")
            for index, n in recorded.counts.items():
                into.counts[index] = into.counts.get(index, 0) + n
    return merged


def recorded_histograms(store: MetricStore) -> dict[str, Recorded]:
    """The latency histograms a MetricStore holds, by metric name: what the library sent, for the pipeline rows."""
    recorded = {}
    for histogram in (store.ttft, store.tpot, store.duration, store.inter_token):
        counts: dict[int, int] = {}
        for point in histogram.snapshot():
            for index, n in point.counts.items():
                counts[index] = counts.get(index, 0) + n
        bounds = None if histogram.exponential else histogram.bounds
        recorded[histogram.spec.name] = Recorded(counts, bounds, histogram.scale)
    return recorded
