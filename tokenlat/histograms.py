"""tokenlat's histograms, aggregated by tokenlat and exported through the OpenTelemetry SDK's pipeline.

Why not ``Histogram.record``: it costs about 7 microseconds a call on this SDK (attribute handling, exemplar
reservoirs, locks), and a request needs five of them plus one per token for the inter-token distribution: more
than the gaps being measured. Here a token costs a clock read, a bucket index and a dict update
(``RequestGaps``), and a request's values are added under one lock when it ends (``MetricStore.record_request``).

The aggregation is the OTLP data model's own: cumulative explicit-bucket histograms (or base-2 exponential ones),
one data point per attribute set, the latest exemplar per bucket. The Python SDK has no MetricProducer hook, so
the points join the SDK's export through ``TokenlatMetricExporter``, a wrapper around any metric exporter (the
reader, the resource and the OTLP exporter stay the SDK's). ``tokenlat.configure`` installs it.

Like the SDK's aggregation, this one caps the distinct attribute sets of each metric (``max_attribute_sets``, the
SDK's ``cardinality_limit``) and records what is beyond into one overflow set: one attribute with unbounded values
(a model name a client chose, say) would otherwise grow the process, and the backend, by a data point per value
per metric, for ever (the histograms are cumulative). Measured before the cap: 20,000 model names took a process
from 34 MB to 214 MB.
"""

from __future__ import annotations

import bisect
import functools
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.sdk.metrics import Exemplar
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
from tokenlat.buckets import BucketLayout
from tokenlat.timing import RequestTiming

SCOPE_NAME = "tokenlat"
logger = logging.getLogger("tokenlat")

# The cap on distinct attribute sets per metric, and the one set everything beyond it is recorded into: the
# OpenTelemetry Python SDK's (opentelemetry/sdk/metrics/_internal/_view_instrument_match.py: _DEFAULT_CARDINALITY_LIMIT,
# _OVERFLOW_ATTRIBUTES) and the metrics SDK specification's ("Cardinality limits", "Overflow attribute"), so a
# dashboard or alert written for the SDK's overflow reads tokenlat's alike. As there, the cap counts the ordinary
# sets only: up to DEFAULT_MAX_ATTRIBUTE_SETS of them never overflow, and the overflow set is one data point more.
DEFAULT_MAX_ATTRIBUTE_SETS = 2000
OVERFLOW_ATTRIBUTE = "otel.metric.overflow"
OVERFLOW_ATTRIBUTES: Mapping[str, AttributeValue] = {OVERFLOW_ATTRIBUTE: True}
# The name of the setting a warning tells operators to raise (tokenlat.configure reads it).
MAX_ATTRIBUTE_SETS_ENV = "TOKENLAT_MAX_ATTRIBUTE_SETS"
# The counter of requests recorded into an overflow set (TokenMetrics exports it).
ATTRIBUTE_OVERFLOW = "tokenlat.attributes.overflow"
# Base-2 exponential buckets at scale 6: 64 buckets per doubling, each 1.09% wide, so a quantile Prometheus
# answers is within 1.1% of the truth (answer and truth share a bucket), inside the 2% users are promised. Only
# the buckets in use are sent: a TTFT spread over a few doublings fills a few hundred.
EXPONENTIAL_SCALE = 6
# Bucket key of a zero value in exponential mode (the tokens of a chunk that arrive with the first one).
ZERO = -(2**62)

BucketIndex = Callable[[float], int]
AttributeKey = frozenset[tuple[str, AttributeValue]]
# (value, time_unix_nano, span_id, trace_id) of the latest sampled observation in a bucket.
ExemplarTuple = tuple[float, int, int, int]


def check_max_attribute_sets(value: object, name: str = "max_attribute_sets") -> int:
    """``value`` if it is a usable cap (a whole number of at least 1, as the SDK's View requires of its
    ``aggregation_cardinality_limit``), else ValueError naming ``name`` and the reason."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            f"{name}: must be a whole number of at least 1 (distinct attribute sets per metric), got {value!r}"
        )
    return value


class OverflowCount(Protocol):
    """Where a MetricStore counts the requests it recorded into an overflow set (``recorder.Count`` is one)."""

    def add(self, n: int = 1) -> None: ...


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


@dataclass(slots=True)
class RequestGaps:
    """One request's inter-token gaps, counted into bucket keys on the hot path and merged once at the end."""

    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf


@dataclass(slots=True)
class _Point:
    """One attribute set's cumulative state."""

    attributes: dict[str, AttributeValue]
    counts: dict[int, int] = field(default_factory=dict)
    count: int = 0
    total: float = 0.0
    minimum: float = math.inf
    maximum: float = -math.inf
    exemplars: dict[int, ExemplarTuple] = field(default_factory=dict)


class CumulativeHistogram:
    """One metric: a cumulative histogram per attribute set, at most ``max_attribute_sets`` of them and then one
    overflow set. Not locked itself: MetricStore holds the lock."""

    def __init__(
        self,
        spec: semconv.MetricSpec,
        exponential: bool,
        scale: int = EXPONENTIAL_SCALE,
        bounds: Sequence[float] | None = None,
        max_attribute_sets: int = DEFAULT_MAX_ATTRIBUTE_SETS,
        on_overflow: Callable[[CumulativeHistogram, bool], None] | None = None,
    ) -> None:
        """``bounds``: the explicit boundaries (default: the spec's advisory ones); unused when ``exponential``.
        ``on_overflow(histogram, first)`` is called for each observation recorded into the overflow set, ``first``
        for the one that created it."""
        self.spec = spec
        self.exponential = exponential
        self.scale = scale
        self.bounds = tuple(spec.buckets if bounds is None else bounds)
        self.index: BucketIndex = exponential_index(scale) if exponential else explicit_index(self.bounds)
        self.max_attribute_sets = check_max_attribute_sets(max_attribute_sets)
        self._on_overflow = on_overflow
        self._points: dict[AttributeKey, _Point] = {}
        # Kept apart from _points so that it never counts against the cap and no recorded attribute set can be
        # mistaken for it.
        self._overflow: _Point | None = None

    def _point(self, key: AttributeKey, attributes: Mapping[str, AttributeValue]) -> _Point:
        point = self._points.get(key)
        if point is None:
            point = self._new_point(key, attributes)
        return point

    def _new_point(self, key: AttributeKey, attributes: Mapping[str, AttributeValue]) -> _Point:
        """The point of an attribute set not seen before: its own while the cap allows, else the overflow set's.

        Only reached when the set is new, so the cap costs nothing to the sets already recorded (and nothing per
        token: a request's observations are added once, when it finishes). Existing sets keep recording after the
        cap is reached, as the SDK's cumulative aggregations do: their series stay continuous.
        """
        if len(self._points) < self.max_attribute_sets:
            point = self._points[key] = _Point(dict(attributes))
            return point
        first = self._overflow is None
        if self._overflow is None:
            self._overflow = _Point(dict(OVERFLOW_ATTRIBUTES))
        if self._on_overflow is not None:
            self._on_overflow(self, first)
        return self._overflow

    @property
    def attribute_sets(self) -> int:
        """How many ordinary attribute sets this metric holds (the overflow set not included)."""
        return len(self._points)

    def add(
        self,
        key: AttributeKey,
        attributes: Mapping[str, AttributeValue],
        value: float,
        exemplar: tuple[int, int, int] | None,
    ) -> None:
        """One observation; ``exemplar`` is (time_unix_nano, span_id, trace_id) of a sampled span, if any."""
        point = self._point(key, attributes)
        bucket = self.index(value)
        point.counts[bucket] = point.counts.get(bucket, 0) + 1
        point.count += 1
        point.total += value
        point.minimum = min(point.minimum, value)
        point.maximum = max(point.maximum, value)
        if exemplar is not None:
            point.exemplars[bucket] = (value, *exemplar)

    def merge(self, key: AttributeKey, attributes: Mapping[str, AttributeValue], gaps: RequestGaps) -> None:
        """A request's pre-counted observations (the inter-token gaps)."""
        if not gaps.count:
            return
        point = self._point(key, attributes)
        for bucket, n in gaps.counts.items():
            point.counts[bucket] = point.counts.get(bucket, 0) + n
        point.count += gaps.count
        point.total += gaps.total
        point.minimum = min(point.minimum, gaps.minimum)
        point.maximum = max(point.maximum, gaps.maximum)

    def snapshot(self) -> list[_Point]:
        """Copies of the points (the overflow set's last), taken under the store's lock."""
        points = [*self._points.values(), *(() if self._overflow is None else (self._overflow,))]
        return [
            _Point(p.attributes, dict(p.counts), p.count, p.total, p.minimum, p.maximum, dict(p.exemplars))
            for p in points
        ]

    def to_metric(self, points: list[_Point], start_ns: int, now_ns: int) -> Metric | None:
        if not points:
            return None
        temporality = AggregationTemporality.CUMULATIVE
        if self.exponential:
            data: Histogram | ExponentialHistogram = ExponentialHistogram(
                [self._exponential_point(p, start_ns, now_ns) for p in points], temporality
            )
        else:
            data = Histogram([self._explicit_point(p, start_ns, now_ns) for p in points], temporality)
        return Metric(name=self.spec.name, description=self.spec.description, unit=self.spec.unit, data=data)

    @staticmethod
    def _exemplars(point: _Point) -> list[Exemplar]:
        return [
            Exemplar({}, value, time_ns, span_id, trace_id)
            for value, time_ns, span_id, trace_id in point.exemplars.values()
        ]

    def _explicit_point(self, point: _Point, start_ns: int, now_ns: int) -> HistogramDataPoint:
        return HistogramDataPoint(
            attributes=point.attributes,
            start_time_unix_nano=start_ns,
            time_unix_nano=now_ns,
            count=point.count,
            sum=point.total,
            bucket_counts=[point.counts.get(i, 0) for i in range(len(self.bounds) + 1)],
            explicit_bounds=list(self.bounds),
            min=point.minimum,
            max=point.maximum,
            exemplars=self._exemplars(point),
        )

    def _exponential_point(self, point: _Point, start_ns: int, now_ns: int) -> ExponentialHistogramDataPoint:
        counts = dict(point.counts)
        zero_count = counts.pop(ZERO, 0)
        if counts:
            low, high = min(counts), max(counts)
            positive = Buckets(offset=low, bucket_counts=[counts.get(i, 0) for i in range(low, high + 1)])
        else:
            positive = Buckets(offset=0, bucket_counts=[])
        return ExponentialHistogramDataPoint(
            attributes=point.attributes,
            start_time_unix_nano=start_ns,
            time_unix_nano=now_ns,
            count=point.count,
            sum=point.total,
            scale=self.scale,
            zero_count=zero_count,
            positive=positive,
            negative=Buckets(offset=0, bucket_counts=[]),
            flags=0,
            min=point.minimum,
            max=point.maximum,
            exemplars=self._exemplars(point),
        )


_INPUT = (semconv.GEN_AI_TOKEN_TYPE, semconv.TOKEN_TYPE_INPUT)
_OUTPUT = (semconv.GEN_AI_TOKEN_TYPE, semconv.TOKEN_TYPE_OUTPUT)


class MetricStore:
    """The five histograms of the contract, updated under one lock, once per request."""

    def __init__(
        self,
        exponential: bool = False,
        scale: int = EXPONENTIAL_SCALE,
        layout: BucketLayout | None = None,
        max_attribute_sets: int = DEFAULT_MAX_ATTRIBUTE_SETS,
        overflow_count: OverflowCount | None = None,
    ) -> None:
        """``scale`` (exponential only): 2**scale buckets per doubling; the Prometheus native-histogram range is
        -4 to 8, and each step up halves a bucket's width (9.1% at 3, 1.09% at 6, 0.27% at 8). ``layout``
        (explicit only): the boundaries, by default ``BucketLayout()``: geometric, every quantile within 5% of the
        truth over its operating ranges (tokenlat.buckets).

        ``max_attribute_sets``: each histogram's cap on distinct attribute sets; an observation with a set beyond
        it is recorded into the one overflow set, ``{"otel.metric.overflow": True}``, as the SDK does. Each request
        with at least one such observation adds 1 to ``overflowed_requests`` and to ``overflow_count`` (the
        exported counter), and the first overflow of each histogram is logged once."""
        if not -4 <= scale <= 8:
            raise ValueError(f"exponential scale must be between -4 and 8 (Prometheus native histograms), got {scale}")
        self.exponential = exponential
        self.layout = layout if layout is not None else BucketLayout()
        self.max_attribute_sets = check_max_attribute_sets(max_attribute_sets)
        self.overflowed_requests = 0
        self._overflow_count = overflow_count
        # Set by _overflowed while a request's values are added, read and reset before the lock is released.
        self._request_overflowed = False
        self._first_overflows: list[str] = []
        self._start_ns = time.time_ns()
        self._lock = threading.Lock()
        self.ttft, self.tpot, self.duration, self.usage, self.inter_token = (
            CumulativeHistogram(
                spec, exponential, scale, self.layout.bounds(spec.name), self.max_attribute_sets, self._overflowed
            )
            for spec in (
                semconv.TTFT_SPEC,
                semconv.TPOT_SPEC,
                semconv.DURATION_SPEC,
                semconv.TOKEN_USAGE_SPEC,
                semconv.ITL_SPEC,
            )
        )
        self._all = (self.ttft, self.tpot, self.duration, self.usage, self.inter_token)

    def _overflowed(self, histogram: CumulativeHistogram, first: bool) -> None:
        """A histogram recorded an observation into its overflow set (called under the lock)."""
        self._request_overflowed = True
        if first:
            self._first_overflows.append(histogram.spec.name)

    def record_request(
        self,
        attributes: Mapping[str, AttributeValue],
        timing: RequestTiming,
        gaps: RequestGaps,
        span: tuple[int, int] | None,
    ) -> None:
        """Record a finished request. ``span`` is (span_id, trace_id) of its sampled span, for exemplars."""
        key = frozenset(attributes.items())
        exemplar = None if span is None else (time.time_ns(), *span)
        ttft, tpot, duration = timing.ttft, timing.time_per_output_token, timing.duration or 0.0
        if timing.error_type is None:
            duration_key, duration_attributes = key, attributes
        else:
            extra = (semconv.ERROR_TYPE, timing.error_type)
            duration_key, duration_attributes = key | {extra}, {**attributes, extra[0]: extra[1]}
        first_overflows: Sequence[str] = ()
        with self._lock:
            if ttft is not None:
                self.ttft.add(key, attributes, ttft, exemplar)
            if tpot is not None:
                self.tpot.add(key, attributes, tpot, exemplar)
            self.duration.add(duration_key, duration_attributes, duration, exemplar)
            if timing.input_tokens is not None:
                self.usage.add(key | {_INPUT}, {**attributes, _INPUT[0]: _INPUT[1]}, timing.input_tokens, exemplar)
            self.usage.add(key | {_OUTPUT}, {**attributes, _OUTPUT[0]: _OUTPUT[1]}, timing.output_tokens, exemplar)
            self.inter_token.merge(key, attributes, gaps)
            # The cap's whole cost to a request within it: this one test, once per request.
            if self._request_overflowed:
                self._request_overflowed = False
                self.overflowed_requests += 1
                if self._overflow_count is not None:
                    self._overflow_count.add()
                first_overflows, self._first_overflows = self._first_overflows, []
        # Logged outside the lock, so that a slow log handler stalls no other request.
        for name in first_overflows:
            self._warn_overflow(name)

    def _warn_overflow(self, name: str) -> None:
        # Names, the cap and the settings only: attribute values may come from clients (a model name a request
        # chose), so none of them reaches a log line.
        logger.warning(
            "tokenlat: metric %s reached its cap of %d distinct attribute sets; observations with further attribute "
            "sets are recorded into one overflow set (%s=true), so their attributes are lost but no observation is, "
            "and their requests are counted in %s. An attribute has unbounded values (a model name taken from "
            "requests, say): bound it, or raise the cap with %s or configure(max_attribute_sets=...). Logged once "
            "per metric.",
            name,
            self.max_attribute_sets,
            OVERFLOW_ATTRIBUTE,
            ATTRIBUTE_OVERFLOW,
            MAX_ATTRIBUTE_SETS_ENV,
        )

    def collect(self) -> list[Metric]:
        now = time.time_ns()
        with self._lock:
            snapshots = [(histogram, histogram.snapshot()) for histogram in self._all]
        metrics = (histogram.to_metric(points, self._start_ns, now) for histogram, points in snapshots)
        return [m for m in metrics if m is not None]


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
    """Wraps a metric exporter so that each export also carries tokenlat's histograms."""

    def __init__(self, inner: MetricExporter) -> None:
        # The reader asks the exporter for its temporality and aggregation preferences: pass the inner ones on.
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self.inner = inner
        self._stores: list[MetricStore] = []

    def attach(self, store: MetricStore) -> None:
        if store not in self._stores:
            self._stores.append(store)

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        extra = [metric for store in self._stores for metric in store.collect()]
        return self.inner.export(merge_into(metrics_data, extra), timeout_millis=timeout_millis, **kwargs)

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)
