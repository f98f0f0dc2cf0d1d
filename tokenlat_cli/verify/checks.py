"""What verify compares: what Prometheus answers against the ground truth of the load.

Counts must match exactly. Quantiles come from ``histogram_quantile`` over explicit buckets, which can only
place a quantile within the bucket that holds it (linear interpolation inside the bucket), so the stated
tolerance of a quantile is the width of the bucket that holds the true value: an answer outside it means data
was lost, duplicated or mis-bucketed on the way.
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
from tokenlat.histograms import EXPONENTIAL_SCALE, exponential_index
from tokenlat.stream import RequestTiming
from tokenlat_cli.profiles import ID_LIKE_ATTRIBUTE

QUANTILES = (0.5, 0.9, 0.99)
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


def quantile_check(
    spec: semconv.MetricSpec, q: float, truths: Sequence[float], observed: float | None, native: bool = False
) -> Check:
    """Classic histograms: the tolerance is the width of the explicit bucket holding the true value. Native
    histograms: the width of its exponential bucket at the coarsest scale tokenlat produces (scale 3)."""
    name = f"{semconv.prometheus_name(spec)} p{round(q * 100)}"
    truth = true_quantile(truths, q)
    lower, upper = exponential_bucket_of(truth, EXPONENTIAL_SCALE) if native else bucket_of(truth, spec.buckets)
    tolerance = upper - lower
    if observed is None or math.isnan(observed):
        return Check(name, truth, None, None, tolerance, False, "no data in Prometheus")
    error = observed - truth
    passed = math.isfinite(tolerance) and abs(error) <= tolerance
    if native:
        detail = f"exponential bucket ({lower:.4g}, {upper:.4g}]; relative error {error / truth:+.1%}"
    else:
        ideal = histogram_quantile(q, truths, spec.buckets)
        detail = f"bucket ({lower:g}, {upper:g}]; a lossless histogram answers {ideal:.4g}"
    return Check(name, truth, observed, error, tolerance, passed, detail)


class Queries:
    """PromQL for one histogram layout: classic (_bucket/_sum/_count series) or native (one series)."""

    def __init__(self, native: bool) -> None:
        self.native = native

    def count(self, spec: semconv.MetricSpec) -> str:
        name = semconv.prometheus_name(spec)
        return f"histogram_count(sum({name}))" if self.native else f"sum({name}_count)"

    def sum(self, spec: semconv.MetricSpec, matchers: str = "") -> str:
        name = semconv.prometheus_name(spec)
        selector = f"{{{matchers}}}" if matchers else ""
        return f"histogram_sum(sum({name}{selector}))" if self.native else f"sum({name}_sum{selector})"

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
