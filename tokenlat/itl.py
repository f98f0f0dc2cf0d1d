"""The inter-token latency distribution, pre-aggregated so that a token costs a few hundred nanoseconds.

Recording every gap through the SDK (``Histogram.record``) costs microseconds per token, the same order as the
gaps being measured. Instead, each request counts its gaps into bucket indexes on the hot path (one clock
read, one bisect or log2, one dict update), merges those counts into an ``InterTokenHistogram`` once when it
ends, and the histogram is exported as an ordinary OTLP histogram data point -- every token counted, nothing
sampled.

The Python SDK has no MetricProducer hook, so the points join the SDK's own export through
``TokenlatMetricExporter``, a wrapper around any metric exporter (``tokenlat.configure`` installs it).
"""

from __future__ import annotations

import bisect
import functools
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Buckets,
    ExponentialHistogram,
    ExponentialHistogramDataPoint,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.util.types import AttributeValue

from tokenlat import semconv

SCOPE_NAME = "tokenlat"
# Base-2 exponential buckets at scale 3: 8 buckets per doubling, relative error under 4.4%; 1 ms to 100 s
# spans ~17 doublings, about 135 buckets, within the SDK's default of 160.
EXPONENTIAL_SCALE = 3
# Bucket key of a zero gap in exponential mode (tokens of one chunk, or of the first chunk after the first).
ZERO = -(2**62)

BucketIndex = Callable[[float], int]


def explicit_index(bounds: Sequence[float]) -> BucketIndex:
    """Bucket i holds (bounds[i-1], bounds[i]], as OTLP explicit histograms define it."""
    return functools.partial(bisect.bisect_left, tuple(bounds))


def exponential_index(scale: int = EXPONENTIAL_SCALE) -> BucketIndex:
    """OTLP base-2 exponential bucket of a value: index i holds (2**(i/2**scale), 2**((i+1)/2**scale)]."""
    factor = 2**scale
    log2, ceil = math.log2, math.ceil

    def index(value: float) -> int:
        return ceil(log2(value) * factor) - 1 if value > 0 else ZERO

    return index


@dataclass
class _Point:
    """One attribute set's cumulative state."""

    attributes: dict[str, AttributeValue]
    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf


@dataclass
class RequestGaps:
    """The gaps of one request, counted into bucket keys; filled on the hot path, merged once at the end."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf


class InterTokenHistogram:
    """A cumulative histogram of inter-token gaps per attribute set, exported through TokenlatMetricExporter."""

    def __init__(self, spec: semconv.MetricSpec = semconv.ITL_SPEC, exponential: bool = False) -> None:
        self.spec = spec
        self.exponential = exponential
        self.index: BucketIndex = exponential_index() if exponential else explicit_index(spec.buckets)
        self._start_ns = time.time_ns()
        self._points: dict[frozenset[tuple[str, AttributeValue]], _Point] = {}
        self._lock = threading.Lock()

    def merge(self, attributes: Mapping[str, AttributeValue], gaps: RequestGaps) -> None:
        """Add one finished request's gaps (called once per request)."""
        if not gaps.count:
            return
        key = frozenset(attributes.items())
        with self._lock:
            point = self._points.get(key)
            if point is None:
                point = self._points[key] = _Point(dict(attributes))
            for bucket, n in gaps.counts.items():
                point.counts[bucket] = point.counts.get(bucket, 0) + n
            point.count += gaps.count
            point.total += gaps.total
            point.minimum = min(point.minimum, gaps.minimum)
            point.maximum = max(point.maximum, gaps.maximum)

    def collect(self) -> Metric | None:
        """The cumulative state as an SDK Metric, or None before the first token gap."""
        now = time.time_ns()
        with self._lock:
            points = [
                (p.attributes, dict(p.counts), p.count, p.total, p.minimum, p.maximum) for p in self._points.values()
            ]
        if not points:
            return None
        if self.exponential:
            data: Histogram | ExponentialHistogram = ExponentialHistogram(
                data_points=[self._exponential_point(now, *p) for p in points],
                aggregation_temporality=AggregationTemporality.CUMULATIVE,
            )
        else:
            data = Histogram(
                data_points=[self._explicit_point(now, *p) for p in points],
                aggregation_temporality=AggregationTemporality.CUMULATIVE,
            )
        return Metric(name=self.spec.name, description=self.spec.description, unit=self.spec.unit, data=data)

    def _explicit_point(
        self, now: int, attributes: dict[str, AttributeValue], counts: dict[int, int], count: int, total: float,
        minimum: float, maximum: float,
    ) -> HistogramDataPoint:  # fmt: skip
        bucket_counts = [counts.get(i, 0) for i in range(len(self.spec.buckets) + 1)]
        return HistogramDataPoint(
            attributes=attributes,
            start_time_unix_nano=self._start_ns,
            time_unix_nano=now,
            count=count,
            sum=total,
            bucket_counts=bucket_counts,
            explicit_bounds=list(self.spec.buckets),
            min=minimum,
            max=maximum,
        )

    def _exponential_point(
        self, now: int, attributes: dict[str, AttributeValue], counts: dict[int, int], count: int, total: float,
        minimum: float, maximum: float,
    ) -> ExponentialHistogramDataPoint:  # fmt: skip
        zero_count = counts.pop(ZERO, 0)
        if counts:
            low, high = min(counts), max(counts)
            positive = Buckets(offset=low, bucket_counts=[counts.get(i, 0) for i in range(low, high + 1)])
        else:
            positive = Buckets(offset=0, bucket_counts=[])
        return ExponentialHistogramDataPoint(
            attributes=attributes,
            start_time_unix_nano=self._start_ns,
            time_unix_nano=now,
            count=count,
            sum=total,
            scale=EXPONENTIAL_SCALE,
            zero_count=zero_count,
            positive=positive,
            negative=Buckets(offset=0, bucket_counts=[]),
            flags=0,
            min=minimum,
            max=maximum,
        )


def merge_into(metrics_data: MetricsData, extra: Sequence[Metric]) -> MetricsData:
    """``metrics_data`` with ``extra`` added to the tokenlat scope of its first resource."""
    if not extra or not metrics_data.resource_metrics:
        return metrics_data
    first, *rest = metrics_data.resource_metrics
    scopes = list(first.scope_metrics)
    for i, scope in enumerate(scopes):
        if scope.scope.name == SCOPE_NAME:
            scopes[i] = ScopeMetrics(scope=scope.scope, metrics=[*scope.metrics, *extra], schema_url=scope.schema_url)
            break
    else:
        scopes.append(ScopeMetrics(scope=InstrumentationScope(SCOPE_NAME), metrics=list(extra), schema_url=""))
    merged = ResourceMetrics(resource=first.resource, scope_metrics=scopes, schema_url=first.schema_url)
    return MetricsData(resource_metrics=[merged, *rest])


class TokenlatMetricExporter(MetricExporter):
    """Wraps a metric exporter so that each export also carries tokenlat's pre-aggregated histograms."""

    def __init__(self, inner: MetricExporter) -> None:
        # The reader asks the exporter for its temporality and aggregation preferences: pass the inner ones on.
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self.inner = inner
        self._histograms: list[InterTokenHistogram] = []

    def attach(self, histogram: InterTokenHistogram) -> None:
        if histogram not in self._histograms:
            self._histograms.append(histogram)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        extra = [m for m in (h.collect() for h in self._histograms) if m is not None]
        return self.inner.export(merge_into(metrics_data, extra), timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
