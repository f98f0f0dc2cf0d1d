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

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from tokenlat import semconv
from tokenlat.attributes import is_id_like
from tokenlat.buckets import BucketLayout
from tokenlat_cli.verify.statistics import Recorded, true_quantile, true_quantile_interval

QUANTILES = (0.5, 0.9, 0.95, 0.99)
# What native histograms promise against the truth (their scale-6 buckets are 1.09% wide).
NATIVE_TARGET = 0.02
#: Through the sidecar, per metric, the least and the most each true value can be as the sidecar saw it
#: (verify.load.Bounds): its quantiles lie between theirs, and the histograms' own target applies from there.
SidecarBounds = tuple[Sequence[float], Sequence[float]]
# Prometheus and this module compute the same interpolation; only float rounding may tell them apart.
_SAME = 1e-9


@dataclass(frozen=True)
class Check:
    """One row of the report: what was expected, what was observed, and whether that is within the tolerance."""

    name: str
    expected: float | str
    observed: float | str | None
    error: float | None
    tolerance: float | str
    passed: bool
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def count_check(name: str, expected: int, observed: float | None) -> Check:
    passed = observed is not None and observed == expected
    error = None if observed is None else observed - expected
    return Check(name, expected, observed, error, "exact", passed, "" if passed else "count differs")


def _quantile_name(spec: semconv.MetricSpec, q: float) -> str:
    return f"{semconv.prometheus_name(spec)} p{q * 100:g}"


def quantile_checks(
    spec: semconv.MetricSpec,
    q: float,
    truths: Sequence[float],
    observed: float | None,
    layout: BucketLayout | None,
    recorded: Recorded | None = None,
    bounds: SidecarBounds | None = None,
) -> list[Check]:
    """The rows of a quantile (module docstring): its error against the truth, and the pipeline's. ``layout`` is
    the classic histograms' bucket layout, None for native histograms; ``recorded``, what the library sent when it
    measured in this process (None: the sidecar measured, and only the truth row is made, against ``bounds``)."""
    if recorded is None:
        return [truth_check(spec, q, truths, observed, layout, bounds)]
    return [truth_check(spec, q, truths, observed, layout), pipeline_check(spec, q, observed, recorded)]


def truth_check(
    spec: semconv.MetricSpec,
    q: float,
    truths: Sequence[float],
    observed: float | None,
    layout: BucketLayout | None,
    bounds: SidecarBounds | None = None,
) -> Check:
    """The quantile Prometheus answers against the true one: relative error within the histograms' stated target.
    Through the sidecar (``bounds``), against every value its quantile can have, from the least of its values'
    quantile to the most's."""
    name = f"{_quantile_name(spec, q)} vs the truth"
    truth = true_quantile(truths, q)
    if layout is None:
        target: float | None = NATIVE_TARGET
        promise = "native histograms"
    else:
        target = layout.target
        promise = f"buckets {layout.preset}"
    shown_target: float | str = target if target is not None else "none"
    if observed is None or math.isnan(observed):
        return Check(name, truth, None, None, shown_target, False, "no data in Prometheus")
    low_truth, high_truth = truth_interval(truths, q, bounds)
    if bounds is None:
        interval = f"is a true p{q * 100:g}"
    else:
        promise = f"{promise}, measured through the sidecar"
        interval = (
            f"is a p{q * 100:g} the sidecar can have read, between the model server's writes and the client's reads"
        )
    # Inside the interval of values that are all q-quantiles the error is 0; outside, to its nearer end.
    nearest = min(max(observed, low_truth), high_truth)
    error = (observed - nearest) / nearest
    detail = f"relative error {error:+.2%}; {promise}"
    if high_truth > low_truth:
        detail = f"{detail}; every value in [{low_truth:.4g}, {high_truth:.4g}] {interval}"
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


def truth_interval(truths: Sequence[float], q: float, bounds: SidecarBounds | None = None) -> tuple[float, float]:
    """The values that are all true q-quantiles; through the sidecar (``bounds``), every value its q-quantile can
    have: from the least values' lowest q-quantile to the most values' highest."""
    if bounds is None:
        return true_quantile_interval(truths, q)
    return true_quantile_interval(bounds[0], q)[0], true_quantile_interval(bounds[1], q)[1]


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
    """No label name is an id (tokenlat.attributes.is_id_like, the library's own rule, which knows label names
    with underscores): an id label reaching Prometheus means the allowlist was bypassed somewhere on the way."""
    offending = sorted(name for name in label_names if is_id_like(name))
    return Check(
        "no request-id or user-id labels",
        "none",
        ", ".join(offending) or "none",
        None,
        "exact",
        not offending,
        f"{len(label_names)} label names checked",
    )
