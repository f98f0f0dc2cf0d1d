"""What verify compares: what Prometheus answers against the ground truth of the load.

Counts must match exactly. Each quantile is judged twice, so that a failure says which of two things broke:

- against the truth, on its relative error, with a stated target: what users see. Native histograms (scale 6)
  promise 2%; classic ones the target of their bucket layout (5% by default), inside its operating range; the
  conventions' advisory buckets promise nothing, and fail this row.
- against what the buckets allow, whatever their resolution: the pipeline. Prometheus must answer what
  ``histogram_quantile`` over the bucket counts the library sent answers (for native histograms: a value in the
  bucket the rank falls in, or the next populated one, where Prometheus 3 answers on an exact tie). A failure here
  means data was lost, duplicated or mis-bucketed on the way. Through the sidecar the counts it sent are in its own
  process, so this row is not made there: the exact counts and the rows against the truth judge that path.
"""

from __future__ import annotations

import bisect
import itertools
import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TypeVar

import requests

from tokenlat import semconv
from tokenlat.buckets import BucketLayout
from tokenlat.histograms import ZERO, MetricStore, exponential_index
from tokenlat.stream import RequestTiming
from tokenlat_cli.profiles import ID_LIKE_ATTRIBUTE

QUANTILES = (0.5, 0.9, 0.95, 0.99)
# What native histograms promise against the truth (their scale-6 buckets are 1.09% wide).
NATIVE_TARGET = 0.02
# Through the sidecar the truth is what a client a hop away saw, and on a loaded machine the client's own event loop
# adds jitter to the tail (the sidecar cannot see it): p99 inter-token gaps were seen 2.6% apart. The target there.
SIDECAR_TARGET = 0.05
# Prometheus and this module compute the same interpolation; only float rounding may tell them apart.
_SAME = 1e-9
# Label names as Prometheus shows them (dots became underscores).
ID_LIKE_LABEL = re.compile(ID_LIKE_ATTRIBUTE.pattern.replace("[._]", "_"))


@dataclass(frozen=True)
class Check:
    name: str
    expected: float | str
    observed: float | str | None
    error: float | None
    tolerance: float | str
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class PrometheusClient:
    """Prometheus' query API (Prometheus, VictoriaMetrics and Thanos Query all serve it), with auth and TLS."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None, verify: str | bool = True) -> None:
        self.url = url
        self.session = requests.Session()
        # Not the environment's proxies or CA bundle (REQUESTS_CA_BUNDLE would override ``verify``): these are
        # this run's local services and certificates.
        self.session.trust_env = False
        self.session.auth = auth
        self.session.verify = verify

    def ok(self, path: str) -> bool:
        """Whether GET ``path`` answers 200 (readiness probes)."""
        try:
            return self.session.get(f"{self.url}{path}", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def query(self, expr: str) -> list[dict[str, object]]:
        response = self.session.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        response.raise_for_status()
        payload = response.json()
        if payload.get("status") != "success":
            raise RuntimeError(f"query {expr!r} failed: {payload}")
        return list(payload["data"]["result"])

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns no series."""
        result = self.query(expr)
        if not result:
            return None
        return float(result[0]["value"][1])  # type: ignore[index]

    def label_values(self) -> dict[str, list[str]]:
        """Every label name with all its values."""
        values = {}
        for name in self.label_names():
            response = self.session.get(f"{self.url}/api/v1/label/{name}/values", timeout=10)
            response.raise_for_status()
            values[name] = list(response.json()["data"])
        return values

    def label_names(self) -> list[str]:
        response = self.session.get(f"{self.url}/api/v1/labels", timeout=10)
        response.raise_for_status()
        return list(response.json()["data"])


T = TypeVar("T")


def poll(read: Callable[[], T], done: Callable[[T], bool], timeout: float, interval: float = 0.5) -> T:
    """Call ``read`` until ``done`` says its value will do or the deadline passes; return the last value read."""
    deadline = time.monotonic() + timeout
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(interval)
        value = read()
    return value


def wait_for_value(
    read: Callable[[], float | None], expected: float, timeout: float, interval: float = 0.5
) -> float | None:
    """Poll until ``read()`` returns ``expected`` or the deadline passes; return the last value read."""
    return poll(read, lambda value: value == expected, timeout, interval)


def true_quantile(values: Sequence[float], q: float) -> float:
    """The nearest-rank quantile: the smallest value with at least q of all values at or below it."""
    ordered = sorted(values)
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


def bucket_of(value: float, bounds: Sequence[float]) -> tuple[float, float]:
    """The (lower, upper] bucket holding ``value``; upper is inf beyond the last boundary."""
    i = bisect.bisect_left(bounds, value)
    lower = bounds[i - 1] if i > 0 else 0.0
    upper = bounds[i] if i < len(bounds) else math.inf
    return lower, upper


def histogram_quantile(q: float, values: Sequence[float], bounds: Sequence[float]) -> float:
    """What Prometheus' histogram_quantile answers for these values in these buckets, if nothing is lost.

    Comparing it with what Prometheus answered separates the two sources of error: the buckets' resolution
    (truth vs this) and the transport (this vs Prometheus).
    """
    counts = [0] * (len(bounds) + 1)
    for value in values:
        counts[bisect.bisect_left(bounds, value)] += 1
    return quantile_of_counts(q, counts, bounds)


def quantile_of_counts(q: float, counts: Sequence[int], bounds: Sequence[float]) -> float:
    """Prometheus' histogram_quantile over explicit bucket counts (``counts[i]`` in ``(bounds[i-1], bounds[i]]``,
    the last one +Inf)."""
    cumulative = list(itertools.accumulate(counts))
    rank = q * cumulative[-1]
    b = next(i for i, c in enumerate(cumulative) if c >= rank)
    if b == len(bounds):
        return bounds[-1]
    start, below = (0.0, 0) if b == 0 else (bounds[b - 1], cumulative[b - 1])
    return start + (bounds[b] - start) * (rank - below) / counts[b]


def count_check(name: str, expected: int, observed: float | None) -> Check:
    passed = observed is not None and observed == expected
    error = None if observed is None else observed - expected
    return Check(name, expected, observed, error, "exact", passed, "" if passed else "count differs")


def exponential_bucket_of(value: float, scale: int) -> tuple[float, float]:
    """The base-2 exponential bucket (base**i, base**(i+1)] holding ``value`` at ``scale``."""
    index = exponential_index(scale)(value)
    base = 2 ** (2**-scale)
    return base**index, base ** (index + 1)


def _quantile_name(spec: semconv.MetricSpec, q: float) -> str:
    return f"{semconv.prometheus_name(spec)} p{q * 100:g}"


def quantile_checks(
    spec: semconv.MetricSpec,
    q: float,
    truths: Sequence[float],
    observed: float | None,
    layout: BucketLayout | None,
    recorded: Recorded | None = None,
) -> list[Check]:
    """The rows of a quantile (module docstring): its error against the truth, and the pipeline's. ``layout`` is
    the classic histograms' bucket layout, None for native histograms; ``recorded``, what the library sent when it
    measured in this process (None: the sidecar measured, and only the truth row is made, at the sidecar's
    target)."""
    if recorded is None:
        return [truth_check(spec, q, truths, observed, layout, SIDECAR_TARGET)]
    return [truth_check(spec, q, truths, observed, layout), pipeline_check(spec, q, observed, recorded)]


def truth_check(
    spec: semconv.MetricSpec,
    q: float,
    truths: Sequence[float],
    observed: float | None,
    layout: BucketLayout | None,
    floor: float | None = None,
) -> Check:
    """The quantile Prometheus answers against the true one: relative error within the stated target (the
    histograms', or ``floor`` where the truth itself is measured that far off: through the sidecar)."""
    name = f"{_quantile_name(spec, q)} vs the truth"
    truth = true_quantile(truths, q)
    if layout is None:
        target: float | None = NATIVE_TARGET
        promise = "native histograms"
    else:
        target = layout.target
        promise = f"buckets {layout.preset}"
    if floor is not None and target is not None and floor > target:
        target, promise = floor, f"{promise}, measured through the sidecar"
    shown_target: float | str = target if target is not None else "none"
    if observed is None or math.isnan(observed):
        return Check(name, truth, None, None, shown_target, False, "no data in Prometheus")
    low_truth, high_truth = true_quantile_interval(truths, q)
    # Inside the interval of values that are all q-quantiles the error is 0; outside, to its nearer end.
    nearest = min(max(observed, low_truth), high_truth)
    error = (observed - nearest) / nearest
    detail = f"relative error {error:+.2%}; {promise}"
    if high_truth > low_truth:
        detail = f"{detail}; every value in [{low_truth:.4g}, {high_truth:.4g}] is a true p{q * 100:g}"
    if target is None:
        return Check(name, truth, observed, error, shown_target, False, f"{detail} promise no accuracy: use geometric")
    promised = layout.promised_range(spec.name) if layout is not None else None
    if promised is not None and not promised[0] <= truth <= promised[1]:
        low, high = promised
        return Check(
            name, truth, observed, error, target, False,
            f"{detail}; the truth is outside the layout's range {low:g}-{high:g} s, where nothing is promised",
        )  # fmt: skip
    return Check(name, truth, observed, error, target, abs(error) <= target, f"{detail}, target {target:.0%}")


def pipeline_check(spec: semconv.MetricSpec, q: float, observed: float | None, recorded: Recorded) -> Check:
    """The quantile Prometheus answers against what the library sent: the transport, exactly."""
    name = f"{_quantile_name(spec, q)} as the buckets allow"
    lower, upper = recorded.answers(q)
    sent = sum(recorded.counts.values())
    detail = f"histogram_quantile over the {sent} observations the library sent" + (
        "" if recorded.bounds is not None else ": the bucket of the rank, through the next populated one"
    )
    expected: float | str = lower if lower == upper else f"[{lower:.4g}, {upper:.4g}]"
    if observed is None or math.isnan(observed):
        return Check(name, expected, None, None, "what was sent", False, "no data in Prometheus")
    passed = lower * (1 - _SAME) <= observed <= upper * (1 + _SAME)
    return Check(name, expected, observed, None, "what was sent", passed, detail)


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
        Prometheus 3 answers, for quantiles >= 0.5, when the rank ends a bucket exactly)."""
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
        return 0.0 if index == ZERO else float(2 ** (index * 2.0**-self.scale))


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


class Queries:
    """PromQL for one histogram layout: classic (_bucket/_sum/_count series) or native (one series)."""

    def __init__(self, native: bool) -> None:
        self.native = native

    def count(self, spec: semconv.MetricSpec, matchers: str = "") -> str:
        name = semconv.prometheus_name(spec)
        selector = f"{{{matchers}}}" if matchers else ""
        return f"histogram_count(sum({name}{selector}))" if self.native else f"sum({name}_count{selector})"

    def sum(self, spec: semconv.MetricSpec, matchers: str = "") -> str:
        name = semconv.prometheus_name(spec)
        selector = f"{{{matchers}}}" if matchers else ""
        return f"histogram_sum(sum({name}{selector}))" if self.native else f"sum({name}_sum{selector})"

    def exemplar_series(self, spec: semconv.MetricSpec) -> str:
        """The series Prometheus keeps a histogram's exemplars on."""
        name = semconv.prometheus_name(spec)
        return name if self.native else f"{name}_bucket"

    def quantile(self, spec: semconv.MetricSpec, q: float) -> str:
        name = semconv.prometheus_name(spec)
        if self.native:
            return f"histogram_quantile({q}, sum({name}))"
        return f"histogram_quantile({q}, sum by (le) ({name}_bucket))"


def truth_series(truths: Sequence[RequestTiming]) -> dict[str, list[float]]:
    """Per metric, the true per-request values (TPOT only where it is defined)."""
    series: dict[str, list[float]] = {spec.name: [] for spec in semconv.HISTOGRAMS}
    for t in truths:
        for spec, value in (
            (semconv.TTFT_SPEC, t.ttft),
            (semconv.TPOT_SPEC, t.time_per_output_token),
            (semconv.DURATION_SPEC, t.duration),
        ):
            if value is not None:
                series[spec.name].append(value)
    return series


def id_value_check(label_values: dict[str, list[str]], ids: set[str]) -> Check:
    """No label value anywhere is (or contains) a user id or request id the load sent."""
    offending = sorted(
        f"{name}={value}" for name, values in label_values.items() for value in values if any(i in value for i in ids)
    )
    checked = sum(len(values) for values in label_values.values())
    return Check(
        "no raw user id or request id in any label value",
        0,
        len(offending),
        None,
        "exact",
        not offending,
        (", ".join(offending[:3]) if offending else f"{checked} label values checked against {len(ids)} ids"),
    )


def id_label_check(label_names: Sequence[str]) -> Check:
    offending = sorted(name for name in label_names if ID_LIKE_LABEL.search(name))
    return Check(
        "no request-id or user-id labels",
        "none",
        ", ".join(offending) or "none",
        None,
        "exact",
        not offending,
        f"{len(label_names)} label names checked",
    )
