"""Quantile accuracy per bucket layout: how far Prometheus' histogram_quantile is from the truth, and the series cost.

    python -m bench.accuracy                                # 20,000 values per workload, a few seconds
    python -m bench.accuracy --markdown docs/accuracy.md    # also rewrite the figures there (`make bench`)

Every workload's values are counted into every layout's buckets (explicit boundaries as tokenlat records them, or
OTLP base-2 exponential buckets at a scale), and the quantile is computed from those counts the way Prometheus
computes it. The emulations are verify's own (tokenlat_cli.verify.statistics), so that the bench and verify cannot
disagree about what Prometheus does:

  classic (explicit buckets)  histogram_quantile: promql BucketQuantile, linear inside the bucket, 0 as the first
                              bucket's start, the last finite boundary for +Inf; Prometheus 2.x and 3.x agree.
  native (exponential)        native_quantile: promql HistogramQuantile of Prometheus 3.16 (module v0.316.0,
                              promql/quantile.go) for standard schemas: exponential interpolation inside the bucket,
                              quantiles >= 0.5 counted from the top. Prometheus 2.42's linear interpolation
                              (native_quantile_linear) is computed alongside: the two versions genuinely differ.

The truth is the nearest rank of the exact values (true_quantile). Nothing runs but arithmetic on counts:
the figures are the same on every machine for a seed. The run also checks the emulations against Prometheus' own
test expectations and that every answer lies where the algorithm must put it, and exits 1 if not.
"""

from __future__ import annotations

import argparse
import bisect
import math
import platform
import random
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bench.hot_path import (
    Check,
    _positive,
    markdown_preamble,
    markdown_table,
    markdown_verdicts,
    merge_checks,
    text_table,
    verdict_lines,
    write_markdown,
)
from tokenlat import semconv
from tokenlat.buckets import DEFAULT_TARGET, LATENCY_METRICS, BucketLayout
from tokenlat.histograms import EXPONENTIAL_SCALE, ZERO
from tokenlat_cli.verify.statistics import (
    bucket_of,
    exponential_bucket_of,
    histogram_quantile,
    native_counts,
    native_quantile,
    native_quantile_linear,
    true_quantile,
)
from tokenlat_cli.verify.synthetic import Distribution, SyntheticConfig, plan_request

BEGIN = "<!-- accuracy:begin -->"
END = "<!-- accuracy:end -->"
SECTION_HEADING = "## Figures"

QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.95, 0.99)
DEFAULT_VALUES = 20_000
DEFAULT_SEED = 1
# The geometric layouts compared with the default, all over the default ranges (and with its 2 s TTFT threshold).
# BucketLayout refuses those that need more than MAX_BUCKETS boundaries for some metric: they are reported as such.
GEOMETRIC_TARGETS: tuple[float, ...] = (0.01, 0.02, 0.03, 0.1)
NATIVE_SCALES: tuple[int, ...] = tuple(range(2, 9))
SEMCONV = "semconv"
DEFAULT = f"default (geometric {DEFAULT_TARGET * 100:g}%)"
# Targets judged by the run.
NATIVE_TARGET_SCALE = 6
NATIVE_TARGET = 0.02

# Workloads: verify's synthetic server (its default distributions) and a prefill-heavy TTFT mix.
BIMODAL_SHORT = Distribution.parse("lognormal:0.15,0.35")
BIMODAL_LONG = Distribution.parse("lognormal:2.5,0.3")
BIMODAL_LONG_SHARE = 0.2

# How the tables name the latency histograms (tokenlat.buckets' short names).
METRIC_LABELS = {"ttft": "TTFT", "tpot": "TPOT", "duration": "duration", "itl": "ITL"}
# A classic histogram's series per attribute set besides its finite boundaries: le="+Inf", _sum and _count.
CLASSIC_EXTRA_SERIES = 3
# Relative slack for comparing an answer with a bucket boundary: Prometheus computes boundaries and powers with
# Go's math, Python with its own; they may differ in the last bit.
FLOAT_SLACK = 1e-12

Progress = Callable[[str], None]


def native_ratio(scale: int) -> float:
    """Upper over lower boundary of every bucket at ``scale``: 2**(2**-scale)."""
    return 2.0 ** (2.0**-scale)


# --- the workloads --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Values of one latency metric, recorded into that metric's buckets."""

    name: str
    metric: semconv.MetricSpec
    description: str
    values: tuple[float, ...]


def make_workloads(values: int, seed: int = DEFAULT_SEED) -> list[Workload]:
    """``values`` requests as verify's synthetic server plans them (its default distributions, the same plan for
    the same seed and index) and as many prefill-heavy TTFTs; TPOT and duration are the requests' own, as tokenlat
    derives them, and the inter-token gaps are the first ``values`` gaps of the requests."""
    config = SyntheticConfig(seed=seed)
    plans = [plan_request(config, i) for i in range(values)]
    gaps: list[float] = []
    for plan in plans:
        gaps.extend(plan.gaps)
        if len(gaps) >= values:
            break
    rng = random.Random(f"tokenlat-accuracy:bimodal:{seed}")
    bimodal = [(BIMODAL_LONG if rng.random() < BIMODAL_LONG_SHARE else BIMODAL_SHORT).sample(rng) for _ in plans]
    lo, hi = config.output_tokens
    return [
        Workload(
            "TTFT",
            semconv.TTFT_SPEC,
            f"TTFT of verify's synthetic server, `{config.ttft}` (median 0.12 s)",
            tuple(p.ttft for p in plans),
        ),
        Workload(
            "TTFT bimodal",
            semconv.TTFT_SPEC,
            f"prefill-heavy TTFT: {1 - BIMODAL_LONG_SHARE:.0%} short prompts `{BIMODAL_SHORT}`,"
            f" {BIMODAL_LONG_SHARE:.0%} long prompts `{BIMODAL_LONG}`",
            tuple(bimodal),
        ),
        Workload(
            "TPOT",
            semconv.TPOT_SPEC,
            f"(duration - TTFT) / (tokens - 1) of the same requests ({lo}-{hi} tokens, gaps `{config.inter_token}`)",
            tuple(sum(p.gaps) / (p.output_tokens - 1) for p in plans),
        ),
        Workload(
            "duration",
            semconv.DURATION_SPEC,
            "request duration of the same requests: TTFT + every gap",
            tuple(p.total_seconds for p in plans),
        ),
        Workload(
            "ITL",
            semconv.ITL_SPEC,
            f"the first {values:,} inter-token gaps of the same requests, `{config.inter_token}`",
            tuple(gaps[:values]),
        ),
    ]


# --- the layouts ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """A way of recording the latency histograms: explicit boundaries per metric, or exponential buckets."""

    name: str
    configured: str  # how a user gets it
    bounds: Mapping[str, tuple[float, ...]] = field(default_factory=dict)  # classic: per metric name
    scale: int | None = None  # native
    target: float | None = None  # geometric: the promised relative error inside its ranges
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)  # geometric: per metric name
    refused: str | None = None  # BucketLayout's reason, when it would not build the layout

    @property
    def native(self) -> bool:
        return self.scale is not None

    @property
    def geometric(self) -> bool:
        return self.target is not None and not self.native

    def bound(self) -> float | None:
        """The largest relative error the layout promises (inside its range), None when it promises nothing."""
        return native_ratio(self.scale) - 1 if self.scale is not None else self.target

    def promised(self, metric: str, value: float) -> bool:
        """Whether ``value`` of ``metric`` is where the layout promises its bound."""
        if self.native:
            return True
        if metric not in self.ranges:
            return False
        low, high = self.ranges[metric]
        return low <= value <= high

    def series(self, metric: str) -> int:
        """Series per attribute set of one histogram: a native one is a single series."""
        return 1 if self.native else len(self.bounds[metric]) + CLASSIC_EXTRA_SERIES


def _percent(value: float) -> str:
    return f"{value * 100:g}%"


def _classic(name: str, layout: BucketLayout, configured: str) -> Layout:
    metrics = [spec.name for spec in LATENCY_METRICS.values()]
    ranges = {m: r for m in metrics if (r := layout.promised_range(m)) is not None}
    return Layout(name, configured, {m: layout.bounds(m) for m in metrics}, None, layout.target, ranges)


def make_layouts() -> list[Layout]:
    """semconv, the default, the other geometric targets (refused ones included, with BucketLayout's reason) and
    native histograms at every scale worth considering."""
    layouts = [
        _classic(SEMCONV, BucketLayout.semconv(), "`TOKENLAT_BUCKETS=semconv`"),
        _classic(DEFAULT, BucketLayout(), "`TOKENLAT_BUCKETS=geometric`"),
    ]
    for target in GEOMETRIC_TARGETS:
        name, configured = f"geometric {_percent(target)}", f"`TOKENLAT_BUCKETS=geometric:{target:g}`"
        try:
            layouts.append(_classic(name, BucketLayout(target=target), configured))
        except ValueError as exc:
            layouts.append(Layout(name, configured, target=target, refused=str(exc)))
    layouts += [Layout(f"native scale {s}", _native_configured(s), scale=s) for s in NATIVE_SCALES]
    return layouts


def _native_configured(scale: int) -> str:
    if scale == EXPONENTIAL_SCALE:
        return "`TOKENLAT_HISTOGRAM=exponential` (tokenlat's default scale)"
    return f"`TOKENLAT_HISTOGRAM=exponential`, `configure(exponential_scale={scale})`"


# --- the run --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    layout: str
    workload: str
    q: float
    truth: float
    answer: float  # what Prometheus (3.16 for native) answers
    promised: bool  # the truth is where the layout promises its bound
    linear: float | None = None  # native: what Prometheus 2.42 answered

    @property
    def error(self) -> float:
        return self.answer / self.truth - 1

    @property
    def linear_error(self) -> float | None:
        return None if self.linear is None else self.linear / self.truth - 1


@dataclass
class Result:
    values: int
    seed: int
    workloads: list[Workload]
    layouts: list[Layout]
    estimates: list[Estimate]
    populated: dict[tuple[str, str], int]  # (native layout, metric): most buckets populated by one workload
    ties: int  # native answers on an exact rank tie, read from the next populated bucket (q >= 0.5)
    checks: list[Check]
    seconds: float

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def built(self, *, native: bool | None = None) -> list[Layout]:
        """The layouts that were measured (not refused), optionally only the native or only the classic ones."""
        return [lay for lay in self.layouts if lay.refused is None and (native is None or lay.native == native)]

    def layout(self, name: str) -> Layout:
        return next(lay for lay in self.layouts if lay.name == name)

    def worst(self, layout: str, workload: str | None = None) -> Estimate:
        """The estimate with the largest relative error of a layout (on one workload)."""
        return max(
            (e for e in self.estimates if e.layout == layout and (workload is None or e.workload == workload)),
            key=lambda e: abs(e.error),
        )

    def estimate(self, layout: str, workload: str, q: float) -> Estimate:
        return next(e for e in self.estimates if (e.layout, e.workload, e.q) == (layout, workload, q))

    def targets(self) -> list[tuple[str, bool, str]]:
        return [self.step_target(), self.geometric_target(), self.native_target()]

    def step_target(self) -> tuple[str, bool, str]:
        """The premise of the geometric bound: no bucket inside the range wider than 1 + target."""
        details, ok = [], True
        for lay in self.built(native=False):
            if lay.target is None:
                continue
            widest = max(_widest_step(lay.bounds[m], *lay.ranges[m]) for m in lay.bounds)
            ok = ok and widest <= 1 + lay.target
            details.append(f"{lay.name} {widest - 1:.3%} (target {_percent(lay.target)})")
        return (
            "every geometric layout's buckets inside its range at most 1 + target wide",
            ok,
            "widest: " + ", ".join(details),
        )

    def geometric_target(self) -> tuple[str, bool, str]:
        details, ok, inside, total = [], True, 0, 0
        for lay in self.built(native=False):
            if lay.target is None:
                continue
            mine = [e for e in self.estimates if e.layout == lay.name]
            total += len(mine)
            inside += sum(e.promised for e in mine)
            errors = [abs(e.error) for e in mine if e.promised]
            ok = ok and all(error <= lay.target for error in errors)
            worst = f"{max(errors):.2%}" if errors else "nothing inside the range"
            details.append(f"{lay.name} {worst} (target {_percent(lay.target)})")
        refused = [lay.name for lay in self.layouts if lay.refused is not None]
        detail = f"worst: {', '.join(details)}; {inside} of {total} quantiles inside the ranges"
        if refused:
            detail += f"; {' and '.join(refused)} refused by BucketLayout (too many buckets), not measured"
        return "every geometric layout's quantiles within its target inside its range", ok, detail

    def native_target(self) -> tuple[str, bool, str]:
        layouts = [lay for lay in self.built(native=True) if lay.scale is not None and lay.scale >= NATIVE_TARGET_SCALE]
        worst = {lay.name: self.worst(lay.name) for lay in layouts}
        ok = all(abs(e.error) <= NATIVE_TARGET for e in worst.values())
        detail = ", ".join(f"{name} {abs(e.error):.2%}" for name, e in worst.items())
        return f"native at scale >= {NATIVE_TARGET_SCALE} within {_percent(NATIVE_TARGET)}", ok, f"worst: {detail}"


def _widest_step(bounds: Sequence[float], low: float, high: float) -> float:
    """The largest upper/lower ratio of the buckets that hold values in [low, high] (inf if the first bucket, which
    starts at 0, or +Inf does)."""
    if bounds[0] > low or bounds[-1] < high:
        return math.inf
    first = bisect.bisect_left(bounds, low)  # bounds[first] >= low: buckets from (bounds[first-1], bounds[first]]
    last = bisect.bisect_left(bounds, high)
    return max(
        (bounds[i] / bounds[i - 1] for i in range(max(first, 1), last + 1)),
        default=1.0,
    )


def _check_classic(result: list[Estimate], workloads: Mapping[str, Workload], layouts: Mapping[str, Layout]) -> Check:
    """Classic answers lie in the bucket holding the truth: what the bound rests on; another bucket means the
    emulation (or the bucket assignment) is wrong."""
    outside = []
    for e in result:
        lay = layouts[e.layout]
        if lay.native:
            continue
        lower, upper = bucket_of(e.truth, lay.bounds[workloads[e.workload].metric.name])
        if math.isinf(upper):  # +Inf: Prometheus answers the last finite boundary, the bucket's lower bound
            upper = lower
        if not lower * (1 - FLOAT_SLACK) <= e.answer <= upper * (1 + FLOAT_SLACK):
            outside.append(f"{e.layout} {e.workload} p{e.q * 100:g}")
    count = sum(not layouts[e.layout].native for e in result)
    return Check(
        "every classic answer lies in the bucket holding the truth",
        not outside,
        f"{count} answers" + (f"; outside: {', '.join(outside[:5])}" if outside else ""),
    )


def _check_native(
    result: list[Estimate], workloads: Mapping[str, Workload], layouts: Mapping[str, Layout]
) -> tuple[Check, int]:
    """Native answers (both versions) lie between the truth's bucket and the bucket of the value ranked next (where
    Prometheus 3.x answers on an exact tie); also counts the 3.x answers that came from the next bucket."""
    ordered = {name: sorted(w.values) for name, w in workloads.items()}
    outside, ties, count = [], 0, 0
    for e in result:
        lay = layouts[e.layout]
        if lay.scale is None:
            continue
        values = ordered[e.workload]
        rank = max(1, math.ceil(e.q * len(values)))
        after = values[min(rank, len(values) - 1)]
        lower, upper = exponential_bucket_of(e.truth, lay.scale)
        _, upper_next = exponential_bucket_of(after, lay.scale)
        for answer in (e.answer, e.linear):
            count += 1
            if answer is None or not lower * (1 - FLOAT_SLACK) <= answer <= upper_next * (1 + FLOAT_SLACK):
                outside.append(f"{e.layout} {e.workload} p{e.q * 100:g}")
        ties += e.answer > upper * (1 + FLOAT_SLACK)
    check = Check(
        "every native answer (3.16 and 2.42) lies between the truth's bucket and the next-ranked value's",
        not outside,
        f"{count} answers" + (f"; outside: {', '.join(outside[:5])}" if outside else ""),
    )
    return check, ties


# Prometheus' own expectations (promql/promqltest/testdata in v0.316.0), which the emulations must reproduce.
# histograms.test, testhistogram{start="positive"} at 50m: cumulative 50 (le 0.1), 70 (0.2), 110 (1), 120 (+Inf).
PROMETHEUS_CLASSIC_CASE = ((0.1, 0.2, 1.0), (50, 20, 40, 10), {0.2: 0.048, 0.5: 0.15, 0.8: 0.72, 1.0: 1.0})
# native_histograms.test, histogram_quantile_1: {{schema:0 count:12 z_bucket:2 z_bucket_w:0.001 buckets:[2 3 0 1 4]}}:
# Prometheus buckets 0..4, i.e. OTLP indexes -1..3.
PROMETHEUS_NATIVE_CASE = (
    {-1: 2, 0: 3, 1: 0, 2: 1, 3: 4},
    2,
    0.001,
    {
        1.0: 16.0,
        0.99: 15.67072476139083,
        0.9: 12.99603834169977,
        0.6: 4.594793419988138,
        0.5: 1.5874010519681994,
        0.1: 0.0006,
        0.0: 0.0,
    },
)


def check_emulations() -> list[Check]:
    """The emulations reproduce the values Prometheus' own tests expect (to 1e-12)."""
    bounds, per_bucket, classic = PROMETHEUS_CLASSIC_CASE
    # Values inside each bucket (0.05 in (0, 0.1], ...): the emulation bins values, Prometheus' test gives counts.
    values = [v for v, n in zip((0.05, 0.15, 0.5, 5.0), per_bucket, strict=True) for _ in range(n)]
    got = {q: histogram_quantile(q, values, bounds) for q in classic}
    counts, zero_count, zero_threshold, native = PROMETHEUS_NATIVE_CASE
    got_native = {q: native_quantile(q, counts, 0, zero_count, zero_threshold) for q in native}
    return [
        Check(
            "classic emulation == Prometheus' histograms.test (testhistogram)",
            all(math.isclose(got[q], want, rel_tol=1e-12) for q, want in classic.items()),
            ", ".join(f"p{q * 100:g} {got[q]:.6g}" for q in classic),
        ),
        Check(
            "native emulation == Prometheus 3.16's native_histograms.test (histogram_quantile_1)",
            all(math.isclose(got_native[q], want, rel_tol=1e-12, abs_tol=1e-15) for q, want in native.items()),
            ", ".join(f"p{q * 100:g} {got_native[q]:.10g}" for q in native),
        ),
    ]


def evaluate(
    workloads: Sequence[Workload], layouts: Sequence[Layout]
) -> tuple[list[Estimate], dict[tuple[str, str], int]]:
    """Every layout's answer for every workload and quantile; and the populated native buckets per metric."""
    estimates: list[Estimate] = []
    populated: dict[tuple[str, str], int] = {}
    for w in workloads:
        metric = w.metric.name
        truths = {q: true_quantile(w.values, q) for q in QUANTILES}
        for lay in layouts:
            if lay.refused is not None:
                continue
            if lay.scale is not None:
                counts = native_counts(w.values, lay.scale)
                zeros = counts.pop(ZERO, 0)  # none in these workloads; Prometheus' zero bucket if there were
                key = (lay.name, metric)
                populated[key] = max(populated.get(key, 0), len(counts))
                answers = {
                    q: (native_quantile(q, counts, lay.scale, zeros), native_quantile_linear(q, counts, lay.scale))
                    for q in QUANTILES
                }
            else:
                answers = {q: (histogram_quantile(q, w.values, lay.bounds[metric]), None) for q in QUANTILES}
            estimates += [
                Estimate(lay.name, w.name, q, truths[q], answer, lay.promised(metric, truths[q]), linear)
                for q, (answer, linear) in answers.items()
            ]
    return estimates, populated


def run(values: int = DEFAULT_VALUES, seed: int = DEFAULT_SEED, progress: Progress | None = None) -> Result:
    say = progress or (lambda _: None)
    start = time.perf_counter()
    workloads = make_workloads(values, seed)
    say(f"accuracy: {len(workloads)} workloads of {values:,} values drawn")
    layouts = make_layouts()
    estimates, populated = evaluate(workloads, layouts)
    say(f"accuracy: {len(estimates)} quantiles estimated")
    by_name = {w.name: w for w in workloads}
    by_layout = {lay.name: lay for lay in layouts}
    native_check, ties = _check_native(estimates, by_name, by_layout)
    checks = [
        Check(
            f"every workload holds {values:,} positive finite values",
            all(len(w.values) == values and all(0 < v < math.inf for v in w.values) for w in workloads),
            ", ".join(f"{w.name} {len(w.values):,}" for w in workloads),
        ),
        *check_emulations(),
        _check_classic(estimates, by_name, by_layout),
        native_check,
    ]
    return Result(
        values,
        seed,
        workloads,
        layouts,
        estimates,
        populated,
        ties,
        merge_checks([checks]),
        time.perf_counter() - start,
    )


# --- the figures ----------------------------------------------------------------------------------------------


def _err(value: float) -> str:
    return f"{value:+.2%}"


def _abs(value: float) -> str:
    return f"{abs(value):.2%}"


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:,.2f}"


def error_headers(result: Result) -> tuple[str, ...]:
    return ("layout", "promised", *(w.name for w in result.workloads), "all workloads")


def error_rows(result: Result) -> list[tuple[str, ...]]:
    """Per layout: the largest |error| over the quantiles, per workload and over all."""
    rows = []
    for lay in result.built():
        bound = lay.bound()
        promise = "nothing" if bound is None else f"{bound:.2%}" + ("" if lay.native else " in range")
        rows.append(
            (
                lay.name,
                promise,
                *(_abs(result.worst(lay.name, w.name).error) for w in result.workloads),
                _abs(result.worst(lay.name).error),
            )
        )
    return rows


COST_HEADERS = (
    "layout",
    "configured with",
    *(f"{METRIC_LABELS[name]} buckets" for name in LATENCY_METRICS),
    "series per attribute set",
    "x semconv",
)


def cost_rows(result: Result) -> list[tuple[str, ...]]:
    """Per layout: buckets per latency histogram (finite boundaries; for native, those populated by the workloads)
    and the series the four cost per attribute set."""
    metrics = [spec.name for spec in LATENCY_METRICS.values()]
    semconv_series = sum(result.layout(SEMCONV).series(m) for m in metrics)
    rows = []
    for lay in result.layouts:
        if lay.refused is not None:
            rows.append((lay.name, lay.configured, *("refused" for _ in metrics), "-", "-"))
            continue
        series = sum(lay.series(m) for m in metrics)
        if lay.native:
            cells = [f"{result.populated.get((lay.name, m), 0)} populated" for m in metrics]
        else:
            cells = [str(len(lay.bounds[m])) for m in metrics]
        rows.append((lay.name, lay.configured, *cells, f"{series:,}", f"{series / semconv_series:.2f}"))
    return rows


def detail_headers(layouts: Sequence[Layout]) -> tuple[str, ...]:
    return ("workload", "quantile", "truth ms", *(lay.name for lay in layouts))


def detail_rows(result: Result, layouts: Sequence[Layout]) -> list[tuple[str, ...]]:
    """Per workload and quantile: the truth and each layout's signed error (answer / truth - 1)."""
    rows = []
    for w in result.workloads:
        for q in QUANTILES:
            truth = result.estimate(layouts[0].name, w.name, q).truth
            errors = (_err(result.estimate(lay.name, w.name, q).error) for lay in layouts)
            rows.append((w.name, f"p{q * 100:g}", _ms(truth), *errors))
    return rows


VERSION_HEADERS = (
    "native layout",
    "bucket ratio - 1 (bound)",
    "max error, Prometheus 3.16 (exponential)",
    "max error, Prometheus 2.42 (linear)",
)


def version_rows(result: Result) -> list[tuple[str, ...]]:
    """Per scale: the bound and the largest |error| with Prometheus 3.x's and 2.42's interpolation."""
    rows = []
    for lay in result.built(native=True):
        mine = [e for e in result.estimates if e.layout == lay.name]
        linear = max(abs(e.linear_error or 0.0) for e in mine)
        rows.append((lay.name, f"{lay.bound() or 0:.2%}", _abs(result.worst(lay.name).error), f"{linear:.2%}"))
    return rows


def notes(result: Result) -> list[str]:
    """What the tables do not say: how errors are measured, where the promises hold, what costs what."""
    metrics = [spec.name for spec in LATENCY_METRICS.values()]
    by_name = {lay.name: lay for lay in result.layouts}
    semconv_layout, default = result.layout(SEMCONV), result.layout(DEFAULT)
    semconv_series = sum(semconv_layout.series(m) for m in metrics)
    default_series = sum(default.series(m) for m in metrics)
    semconv_p99 = result.estimate(semconv_layout.name, "TTFT", 0.99)
    lines = [
        "Error = answer / truth - 1, the truth being the nearest rank of the exact values; the first table gives the"
        f" largest |error| over p{', p'.join(f'{q * 100:g}' for q in QUANTILES)}.",
        f"Series per attribute set: the four latency histograms; a classic one costs its finite boundaries + 1"
        f' (le="+Inf") + _sum + _count, a native one 1 series. The default costs {default_series:,} series per'
        f" attribute set against semconv's {semconv_series:,} ({default_series / semconv_series:.1f}x); token usage"
        " keeps the conventions' 14 boundaries in every classic layout (17 more series), 1 native.",
        "With NHCB (native histograms with custom buckets: Prometheus 3.x's `convert_classic_histograms_to_nhcb` on"
        " scrapes, `otlp: convert_histograms_to_nhcb` on its OTLP receiver) a classic layout costs 1 series per"
        " histogram too, with the same boundaries and the same linear interpolation.",
        f"Native buckets: those populated by the workloads (most for one workload); they cost sample size, not"
        f" series. semconv's TTFT p99 on the lognormal workload: {semconv_p99.answer * 1000:.1f} ms answered for"
        f" {semconv_p99.truth * 1000:.1f} ms ({_err(semconv_p99.error)}), in its bucket"
        f" {_bucket_text(semconv_p99.truth, semconv_layout.bounds[semconv.TTFT_SPEC.name])}.",
        f"Native answers from the next populated bucket on an exact rank tie (Prometheus 3.x counts q >= 0.5 from the"
        f" top): {result.ties} in this run.",
    ]
    for lay in result.layouts:
        if lay.refused is not None:
            lines.append(f"{lay.name} is refused by BucketLayout over the default ranges: {lay.refused}.")
    outside = [e for e in result.estimates if by_name[e.layout].geometric and not e.promised]
    if outside:
        lines.append(f"{len(outside)} geometric quantiles fell outside their layout's range (no promise there).")
    return lines


def _bucket_text(value: float, bounds: Sequence[float]) -> str:
    lower, upper = bucket_of(value, bounds)
    return f"({lower:g}, {upper:g}]"


def tables(result: Result) -> list[tuple[str, tuple[str, ...], list[tuple[str, ...]]]]:
    """(caption, headers, rows) of every table, in the order both reports show them."""
    classic, native = result.built(native=False), result.built(native=True)
    return [
        ("Largest |error| per layout and workload", error_headers(result), error_rows(result)),
        ("What each layout costs", COST_HEADERS, cost_rows(result)),
        ("Classic layouts, error per quantile", detail_headers(classic), detail_rows(result, classic)),
        ("Native layouts, error per quantile (Prometheus 3.16)", detail_headers(native), detail_rows(result, native)),
        ("Native histograms: Prometheus 3.x against 2.42", VERSION_HEADERS, version_rows(result)),
    ]


def _workload_text(result: Result) -> str:
    return (
        f"{result.values:,} values per workload, seed {result.seed}: "
        + "; ".join(f"{w.name}: {w.description}" for w in result.workloads)
        + f"; quantiles p{', p'.join(f'{q * 100:g}' for q in QUANTILES)}; {result.seconds:.1f} s."
    )


def report(result: Result) -> str:
    lines = [_workload_text(result), ""]
    for caption, headers, rows in tables(result):
        lines += [f"{caption}:", "", text_table(headers, rows), ""]
    lines += [*notes(result), "", *verdict_lines(result.targets(), result.checks)]
    return "\n".join(lines)


def markdown_figures(result: Result, command: str) -> str:
    machine_info = {"Python": f"{platform.python_implementation()} {platform.python_version()}"}
    out = markdown_preamble(command, _workload_text(result), machine_info)
    for caption, headers, rows in tables(result):
        out += [f"{caption}:", "", *markdown_table(headers, rows), ""]
    out += [
        *(f"- {line}" for line in notes(result)),
        "",
        *markdown_verdicts(result.targets(), result.checks, "in the same run"),
    ]
    return "\n".join(out)


# --- entry point ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--values",
        type=_positive(100),
        default=DEFAULT_VALUES,
        help=f"values per workload (default {DEFAULT_VALUES})",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"workload seed (default {DEFAULT_SEED})")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="rewrite the figures section of this file")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run(args.values, args.seed, progress)
    print(report(result))
    if not result.passed:
        print("accuracy: correctness check FAILED; figures not written", file=sys.stderr)
        return 1
    if args.markdown is not None:
        command = f"python -m bench.accuracy --markdown {args.markdown}"
        if (args.values, args.seed) != (DEFAULT_VALUES, DEFAULT_SEED):
            command = f"python -m bench.accuracy --values {args.values} --seed {args.seed}"
        write_markdown(args.markdown, markdown_figures(result, command), begin=BEGIN, end=END, heading=SECTION_HEADING)
        progress(f"accuracy: figures written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
