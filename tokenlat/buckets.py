"""Bucket layouts of the classic (explicit-bucket) latency histograms, with an accuracy the user can rely on.

Prometheus' ``histogram_quantile`` finds the bucket holding the quantile's rank and interpolates inside it. The
true quantile (the value of that rank) lies in the same bucket, so whatever the data, answer and truth are both in
``(lower, upper]`` and the answer is within ``upper / lower - 1`` of the truth. Geometric boundaries with ratio
``1 + target`` therefore keep every quantile inside the layout's operating range ``[low, high]`` within
``target`` of the truth. Outside the range nothing is promised: the first bucket reaches down to 0, and a value
above the last boundary lands in +Inf (``histogram_quantile`` then answers the last boundary).

Thresholds the alerts and SLOs use (2 s TTFT) are boundaries too, so that "the fraction of requests over the
threshold" is an exact count, not an interpolation.

    layout = BucketLayout.parse("geometric:0.05;ttft=0.02-30;ttft@2")   # TOKENLAT_BUCKETS
    layout.bounds(semconv.TTFT)        # the boundaries tokenlat records TTFT with
    layout.target                       # 0.05; None for the semconv preset, which promises no accuracy
    str(layout)                         # the spec again, for TOKENLAT_BUCKETS

Spec grammar (``;``-separated, spaces ignored): the preset first, ``semconv`` (the conventions' advisory buckets)
or ``geometric[:TARGET]`` (default 0.05); then, for ``geometric`` only, ``METRIC=LOW-HIGH`` (an operating range)
and ``METRIC@VALUE`` (a threshold that must be a boundary), where METRIC is ``ttft``, ``tpot``, ``duration`` or
``itl``. Token usage keeps the conventions' buckets in every layout: it counts tokens, and no quantile of it is
promised.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from tokenlat import semconv

__all__ = [
    "DEFAULT_RANGES",
    "DEFAULT_TARGET",
    "DEFAULT_THRESHOLDS",
    "LATENCY_METRICS",
    "MAX_BUCKETS",
    "BucketLayout",
    "geometric_bounds",
]

# The short names a spec uses for the latency histograms, and the histograms they stand for.
LATENCY_METRICS: dict[str, semconv.MetricSpec] = {
    "ttft": semconv.TTFT_SPEC,
    "tpot": semconv.TPOT_SPEC,
    "duration": semconv.DURATION_SPEC,
    "itl": semconv.ITL_SPEC,
}
DEFAULT_TARGET = 0.05
# Where the default layout keeps its promise. Wider ranges cost buckets (one series each per attribute set):
# log(high / low) / log(1 + target) of them.
DEFAULT_RANGES: dict[str, tuple[float, float]] = {
    "ttft": (0.02, 30.0),
    "tpot": (0.005, 1.0),
    "duration": (0.1, 300.0),
    "itl": (0.002, 2.0),
}
# Thresholds of the default alert rules: "TTFT p95 above 2 s" must count requests, not interpolate.
DEFAULT_THRESHOLDS: dict[str, tuple[float, ...]] = {"ttft": (2.0,)}
# Per metric. Each boundary is a series per attribute set: a layout past this is a mistake, not a choice.
MAX_BUCKETS = 400


def geometric_bounds(low: float, high: float, target: float, include: tuple[float, ...] = ()) -> tuple[float, ...]:
    """Boundaries from one step below ``low`` up to at least ``high``, each at most ``1 + target`` times the one
    before, with every value of ``include`` among them. ValueError names what cannot work."""
    if not (math.isfinite(low) and math.isfinite(high)) or low <= 0 or high <= low:
        raise ValueError(f"range {low:g}-{high:g}: needs 0 < low < high")
    if not 0 < target < 1:
        raise ValueError(f"target {target:g}: must be between 0 and 1 (exclusive), e.g. 0.05 for 5%")
    # Boundaries are rounded to a few significant digits (le="0.02205" reads like a number; enough digits that the
    # rounding, at most half a unit in the last digit of each boundary, cannot stretch a step past the target), and
    # the steps are made that much shorter than the target allows.
    digits = max(4, math.ceil(-math.log10(target)) + 3)
    slack = 1 + 2.2 * 0.5 * 10 ** (1 - digits)
    ratio = (1 + target) / slack
    needed = math.ceil(math.log(high / low) / math.log(ratio)) + 2 + len(include)
    if needed > MAX_BUCKETS:
        raise ValueError(
            f"range {low:g}-{high:g} at {target:.3g} needs {needed} buckets, more than {MAX_BUCKETS}: "
            "narrow the range or loosen the target"
        )
    value = low / ratio  # one step below low, so that low itself is in a bucket with a lower bound
    bound = float(f"{value:.{digits}g}")
    bounds = {bound}
    while bound < high:  # the rounded bound: rounding down could leave the last one just short of high
        value *= ratio
        bound = float(f"{value:.{digits}g}")
        bounds.add(bound)
    for threshold in include:
        if not (math.isfinite(threshold) and threshold > 0):
            raise ValueError(f"threshold {threshold!r}: must be a positive number")
        bounds.add(threshold)
    return tuple(sorted(bounds))


@dataclass(frozen=True)
class BucketLayout:
    """The explicit-bucket boundaries of every histogram: the conventions' (``semconv``) or geometric ones."""

    preset: str = "geometric"
    target: float | None = DEFAULT_TARGET
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=lambda: dict(DEFAULT_RANGES))
    thresholds: Mapping[str, tuple[float, ...]] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))

    def __post_init__(self) -> None:
        if self.preset not in ("semconv", "geometric"):
            raise ValueError(f"preset {self.preset!r}: must be semconv or geometric")
        for name in (*self.ranges, *self.thresholds):
            if name not in LATENCY_METRICS:
                raise ValueError(f"{name!r}: not a latency histogram; one of {', '.join(LATENCY_METRICS)}")
        if self.preset == "semconv":
            if self.target is not None or self.ranges or self.thresholds:
                raise ValueError("semconv: the conventions' buckets take no target, range or threshold")
            return
        if self.target is None:
            raise ValueError("geometric: needs a target")
        object.__setattr__(self, "_bounds", {name: self._geometric(name) for name in LATENCY_METRICS})

    @classmethod
    def semconv(cls) -> BucketLayout:
        return cls("semconv", None, {}, {})

    def _geometric(self, name: str) -> tuple[float, ...]:
        low, high = self.ranges.get(name, DEFAULT_RANGES[name])
        assert self.target is not None
        try:
            return geometric_bounds(low, high, self.target, tuple(self.thresholds.get(name, ())))
        except ValueError as exc:
            raise ValueError(f"{name}: {exc}") from None

    def bounds(self, metric: str) -> tuple[float, ...]:
        """The boundaries of ``metric`` (an OpenTelemetry name, semconv.TTFT ...)."""
        if self.preset == "geometric":
            for name, spec in LATENCY_METRICS.items():
                if spec.name == metric:
                    return self._bounds[name]  # type: ignore[attr-defined]
        for spec in semconv.ALL_METRICS:
            if spec.name == metric:
                return spec.buckets
        raise KeyError(metric)

    def promised_range(self, metric: str) -> tuple[float, float] | None:
        """Where the target holds for ``metric``; None where the layout promises nothing."""
        for name, spec in LATENCY_METRICS.items():
            if spec.name == metric and self.preset == "geometric":
                return self.ranges.get(name, DEFAULT_RANGES[name])
        return None

    # -- the spec string (TOKENLAT_BUCKETS) ------------------------------------------------------------------------

    @classmethod
    def parse(cls, spec: str) -> BucketLayout:
        """A layout from its spec (module docstring); ValueError says which item is wrong and why."""
        items = [item.replace(" ", "") for item in spec.split(";")]
        items = [item for item in items if item]
        if not items:
            raise ValueError("empty: expected semconv or geometric[:TARGET]")
        preset, _, target_text = items[0].partition(":")
        if preset == "semconv":
            if target_text or len(items) > 1:
                raise ValueError("semconv takes no target, range or threshold")
            return cls.semconv()
        if preset != "geometric":
            raise ValueError(f"{items[0]!r}: must start with semconv or geometric[:TARGET]")
        target = _number(target_text, "target") if target_text else DEFAULT_TARGET
        ranges = dict(DEFAULT_RANGES)
        thresholds: dict[str, tuple[float, ...]] = {}
        explicit_thresholds = False
        for item in items[1:]:
            if "@" in item:
                name, _, value = item.partition("@")
                _metric(name, item)
                explicit_thresholds = True
                thresholds[name] = (*thresholds.get(name, ()), _number(value, item))
            elif "=" in item:
                name, _, bounds = item.partition("=")
                _metric(name, item)
                low, sep, high = bounds.partition("-")
                if not sep:
                    raise ValueError(f"{item!r}: a range is METRIC=LOW-HIGH")
                ranges[name] = (_number(low, item), _number(high, item))
            else:
                raise ValueError(f"{item!r}: expected METRIC=LOW-HIGH or METRIC@VALUE")
        return cls("geometric", target, ranges, thresholds if explicit_thresholds else dict(DEFAULT_THRESHOLDS))

    def __str__(self) -> str:
        if self.preset == "semconv":
            return "semconv"
        items = [f"geometric:{self.target:g}"]
        items += [f"{name}={low:g}-{high:g}" for name, (low, high) in self.ranges.items()]
        items += [f"{name}@{value:g}" for name, values in self.thresholds.items() for value in values]
        return ";".join(items)


def _metric(name: str, item: str) -> None:
    if name not in LATENCY_METRICS:
        raise ValueError(f"{item!r}: {name!r} is not one of {', '.join(LATENCY_METRICS)}")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{what}: {text!r} is not a finite number")
    return value
