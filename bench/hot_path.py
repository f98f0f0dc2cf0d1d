"""CPU time per streamed token: naive OpenTelemetry, prometheus_client and tokenlat on the same token stream.

    python -m bench.hot_path                                  # 2,000 requests x 64 tokens, 5 repeats
    python -m bench.hot_path --markdown docs/benchmarks.md    # also rewrite the figures there (`make bench`)

Every approach replays the same precomputed requests (same attributes, same timestamps) through its own loop:

  naive OTel         per token: ``Histogram.record(gap, attrs)`` + ``Counter.add(1, attrs)`` on an SDK MeterProvider
  prometheus_client  per request: ``Histogram.labels(...)``; per token: ``child.observe(gap)``
  tokenlat           per request: ``metrics.request(attrs)`` and ``rec.finish()``; per token: ``rec.tokens(1)``
  baseline           the same loops, recording nothing: subtracted to give the cost each approach adds

The clock is fake (``iter(timestamps).__next__``, one read per token for every approach) so that the gaps are
identical everywhere and only recording costs differ. The run also checks that tokenlat counted every gap into the
same buckets as the naive histogram and prometheus_client did, and exits 1 if not.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import math
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import prometheus_client
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    Metric,
    MetricExporter,
    NumberDataPoint,
    PeriodicExportingMetricReader,
)
from opentelemetry.util.types import AttributeValue

from tokenlat import semconv
from tokenlat.buckets import BucketLayout
from tokenlat.histograms import TokenlatMetricExporter
from tokenlat.recorder import TokenMetrics
from tokenlat.testing import CapturingExporter

NAIVE = "naive OTel"
PROMETHEUS = "prometheus_client"
TOKENLAT = "tokenlat"
BASELINE = "baseline (no recording)"
CLOCK_ONLY = "fake clock read only"
TOKENLAT_NO_FINISH = "tokenlat without finish()"
# Interleaved in this order on every repeat, so that drift (thermal, noisy neighbours) hits all alike. The last
# two only explain the others: what the clock read costs, and how tokenlat's cost splits between the per-token
# path and the once-per-request finish().
ORDER: tuple[str, ...] = (NAIVE, PROMETHEUS, TOKENLAT, BASELINE, CLOCK_ONLY, TOKENLAT_NO_FINISH)
RECORDERS: tuple[str, ...] = (NAIVE, PROMETHEUS, TOKENLAT)

BEGIN = "<!-- hot-path:begin -->"
END = "<!-- hot-path:end -->"
# Targets of the hot path (see docs/benchmarks.md).
TARGET_VS_NAIVE = 10.0

# Long enough that the periodic reader never exports during a run: exports happen on force_flush, untimed.
NEVER_MS = 3_600_000
OUTPUT_TOKENS = "bench.output_tokens"
PROMETHEUS_NAME = "gen_ai_server_inter_token_latency_seconds"
# Label names prometheus_client gets for the five attribute keys, in this order.
LABELS: tuple[tuple[str, str], ...] = (
    ("model", semconv.GEN_AI_REQUEST_MODEL),
    ("operation", semconv.GEN_AI_OPERATION_NAME),
    ("provider", semconv.GEN_AI_PROVIDER_NAME),
    ("gpu_type", semconv.GPU_TYPE),
    ("user_tier", semconv.USER_TIER),
)
# Two deployments x two user tiers: four attribute sets of five keys, a realistic low-cardinality mix.
DEPLOYMENTS: tuple[tuple[str, str], ...] = (("qwen3-8b", "nvidia-l4"), ("llama-3.1-70b-instruct", "nvidia-h100"))
TIERS: tuple[str, ...] = ("free", "pro")

AttributeKey = frozenset[tuple[str, AttributeValue]]
Progress = Callable[[str], None]

# All three contenders record the inter-token gaps into the boundaries tokenlat uses by default (geometric, 5%).
ITL_BOUNDS = BucketLayout().bounds(semconv.INTER_TOKEN_LATENCY)


# --- the workload -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Precomputed requests: every approach replays exactly these, so they see the same gaps."""

    requests: int
    tokens: int
    seed: int
    stream: tuple[int, ...]  # the token ids every request yields; only iterated, like a real stream's chunks
    attributes: tuple[dict[str, AttributeValue], ...]  # per request (four shared dicts, as a server would reuse)
    labels: tuple[tuple[str, ...], ...]  # per request: the same values in LABELS order
    token_stamps: tuple[list[float], ...]  # per request: the clock at each token (what naive/prometheus read)
    # Per request: arrival, each token, end. tokenlat's recorder also reads the clock in request() and finish(),
    # so it gets these two extra readings and sees the very same token timestamps.
    request_stamps: tuple[list[float], ...]

    @property
    def total_tokens(self) -> int:
        return self.requests * self.tokens

    @property
    def total_gaps(self) -> int:
        return self.requests * (self.tokens - 1)


def make_workload(requests: int, tokens: int, seed: int = 1) -> Workload:
    rng = random.Random(seed)
    combos = [
        {
            semconv.GEN_AI_REQUEST_MODEL: model,
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.GEN_AI_PROVIDER_NAME: "vllm",
            semconv.GPU_TYPE: gpu,
            semconv.USER_TIER: tier,
        }
        for model, gpu in DEPLOYMENTS
        for tier in TIERS
    ]
    attributes: list[dict[str, AttributeValue]] = []
    token_stamps: list[list[float]] = []
    request_stamps: list[list[float]] = []
    for r in range(requests):
        arrival = r * 0.05
        # TTFT around 150 ms; inter-token gaps lognormal around 20 ms, with the odd scheduler stall of ~0.4 s so
        # that the upper buckets are exercised too.
        stamps = [arrival + rng.lognormvariate(math.log(0.15), 0.5)]
        for _ in range(tokens - 1):
            gap = rng.lognormvariate(math.log(0.02), 0.6)
            if rng.random() < 0.005:
                gap *= 20
            stamps.append(stamps[-1] + gap)
        attributes.append(combos[rng.randrange(len(combos))])
        token_stamps.append(stamps)
        request_stamps.append([arrival, *stamps, stamps[-1] + 0.001])
    return Workload(
        requests=requests,
        tokens=tokens,
        seed=seed,
        stream=tuple(range(tokens)),
        attributes=tuple(attributes),
        labels=tuple(tuple(str(a[key]) for _, key in LABELS) for a in attributes),
        token_stamps=tuple(token_stamps),
        request_stamps=tuple(request_stamps),
    )


# --- what each approach recorded, for the correctness checks ------------------------------------------------


@dataclass
class Distribution:
    """One attribute set's inter-token histogram, as exported."""

    count: int
    total: float
    buckets: tuple[int, ...]  # per bucket (not cumulative), len(ITL_BOUNDS) + 1


@dataclass
class Observed:
    histograms: dict[AttributeKey, Distribution] = field(default_factory=dict)
    counted_tokens: int | None = None  # the naive token counter's total

    @property
    def count(self) -> int:
        return sum(d.count for d in self.histograms.values())


def _otel_histograms(metric: Metric | None) -> dict[AttributeKey, Distribution]:
    out: dict[AttributeKey, Distribution] = {}
    for dp in metric.data.data_points if metric is not None else ():
        assert isinstance(dp, HistogramDataPoint), dp
        out[frozenset((dp.attributes or {}).items())] = Distribution(dp.count, dp.sum, tuple(dp.bucket_counts))
    return out


def _prometheus_histograms(registry: prometheus_client.CollectorRegistry) -> dict[AttributeKey, Distribution]:
    cumulative: dict[tuple[str, ...], list[tuple[float, float]]] = {}
    sums: dict[tuple[str, ...], float] = {}
    for family in registry.collect():
        for sample in family.samples:
            values = tuple(sample.labels[label] for label, _ in LABELS)
            if sample.name.endswith("_bucket"):
                cumulative.setdefault(values, []).append((float(sample.labels["le"]), sample.value))
            elif sample.name.endswith("_sum"):
                sums[values] = sample.value
    out: dict[AttributeKey, Distribution] = {}
    for values, points in cumulative.items():
        running = [int(v) for _, v in sorted(points)]
        buckets = tuple(b - a for a, b in zip([0, *running], running, strict=False))
        key = frozenset((key, value) for (_, key), value in zip(LABELS, values, strict=True))
        out[key] = Distribution(running[-1], sums[values], buckets)
    return out


# --- the measured loops -------------------------------------------------------------------------------------
# Each loop is written out in full, with the same shape, rather than parametrised by a callback: a callback would
# add a Python call per token to every approach and blur the differences being measured.


def _otel_provider(exporter: MetricExporter) -> MeterProvider:
    # A periodic reader, as in production (not an in-memory one): the SDK's record path is the same, and the
    # reader's thread sleeps through the measurement.
    return MeterProvider(metric_readers=[PeriodicExportingMetricReader(exporter, export_interval_millis=NEVER_MS)])


def measure_naive(w: Workload) -> tuple[int, Observed]:
    exporter = CapturingExporter()
    provider = _otel_provider(exporter)
    try:
        meter = provider.get_meter("bench.naive")
        histogram = meter.create_histogram(
            semconv.INTER_TOKEN_LATENCY,
            unit="s",
            description=semconv.ITL_SPEC.description,
            explicit_bucket_boundaries_advisory=ITL_BOUNDS,
        )
        counter = meter.create_counter(OUTPUT_TOKENS, unit="{token}")
        stream, attributes, stamps = w.stream, w.attributes, w.token_stamps
        gc.collect()
        start = time.process_time_ns()
        for r in range(w.requests):
            attrs = attributes[r]
            clock = iter(stamps[r]).__next__
            last: float | None = None
            for _token in stream:
                now = clock()
                if last is not None:
                    histogram.record(now - last, attrs)
                last = now
                counter.add(1, attrs)
        elapsed = time.process_time_ns() - start
        provider.force_flush()
        tokens = exporter.metric(OUTPUT_TOKENS)
        counted = 0
        for dp in tokens.data.data_points if tokens is not None else ():
            assert isinstance(dp, NumberDataPoint), dp
            counted += int(dp.value)
        return elapsed, Observed(_otel_histograms(exporter.metric(semconv.INTER_TOKEN_LATENCY)), counted)
    finally:
        provider.shutdown()


def measure_prometheus(w: Workload) -> tuple[int, Observed]:
    registry = prometheus_client.CollectorRegistry()
    histogram = prometheus_client.Histogram(
        PROMETHEUS_NAME,
        semconv.ITL_SPEC.description,
        [label for label, _ in LABELS],
        buckets=ITL_BOUNDS,
        registry=registry,
    )
    stream, labels, stamps = w.stream, w.labels, w.token_stamps
    gc.collect()
    start = time.process_time_ns()
    for r in range(w.requests):
        # Labels resolved once per request, as a careful server would; resolving them per token would cost more.
        child = histogram.labels(*labels[r])
        clock = iter(stamps[r]).__next__
        last: float | None = None
        for _token in stream:
            now = clock()
            if last is not None:
                child.observe(now - last)
            last = now
    elapsed = time.process_time_ns() - start
    return elapsed, Observed(_prometheus_histograms(registry))


def measure_tokenlat(w: Workload) -> tuple[int, Observed]:
    exporter = CapturingExporter()
    provider = _otel_provider(TokenlatMetricExporter(exporter))
    try:
        metrics = TokenMetrics(provider)
        stream, attributes, stamps = w.stream, w.attributes, w.request_stamps
        gc.collect()
        start = time.process_time_ns()
        for r in range(w.requests):
            # request() filters the attributes and finish() records TTFT, TPOT, duration and usage besides merging
            # the gaps: both are timed, their cost spread over the request's tokens.
            rec = metrics.request(attributes[r], clock=iter(stamps[r]).__next__)
            for _token in stream:
                rec.tokens(1)
            rec.finish()
        elapsed = time.process_time_ns() - start
        provider.force_flush()
        return elapsed, Observed(_otel_histograms(exporter.metric(semconv.INTER_TOKEN_LATENCY)))
    finally:
        provider.shutdown()


def measure_baseline(w: Workload) -> tuple[int, Observed]:
    stream, attributes, stamps = w.stream, w.attributes, w.token_stamps
    gc.collect()
    start = time.process_time_ns()
    for r in range(w.requests):
        # The same per-request lookups as the recording loops, so that subtracting this leaves only recording.
        attrs = attributes[r]  # noqa: F841
        clock = iter(stamps[r]).__next__  # noqa: F841
        for _token in stream:
            pass
    return time.process_time_ns() - start, Observed()


def measure_clock_only(w: Workload) -> tuple[int, Observed]:
    # The baseline plus one fake clock read per token: the part of every "added" figure that is the clock.
    stream, attributes, stamps = w.stream, w.attributes, w.token_stamps
    gc.collect()
    start = time.process_time_ns()
    for r in range(w.requests):
        attrs = attributes[r]  # noqa: F841
        clock = iter(stamps[r]).__next__
        for _token in stream:
            clock()
    return time.process_time_ns() - start, Observed()


def measure_tokenlat_without_finish(w: Workload) -> tuple[int, Observed]:
    # tokenlat's loop with finish() moved out of the timed region: request() and the per-token path alone.
    exporter = CapturingExporter()
    provider = _otel_provider(TokenlatMetricExporter(exporter))
    try:
        metrics = TokenMetrics(provider)
        stream, attributes, stamps = w.stream, w.attributes, w.request_stamps
        pending = []
        gc.collect()
        start = time.process_time_ns()
        for r in range(w.requests):
            rec = metrics.request(attributes[r], clock=iter(stamps[r]).__next__)
            for _token in stream:
                rec.tokens(1)
            pending.append(rec)
        elapsed = time.process_time_ns() - start
        for rec in pending:
            rec.finish()
        return elapsed, Observed()
    finally:
        provider.shutdown()


MEASURE: dict[str, Callable[[Workload], tuple[int, Observed]]] = {
    NAIVE: measure_naive,
    PROMETHEUS: measure_prometheus,
    TOKENLAT: measure_tokenlat,
    BASELINE: measure_baseline,
    CLOCK_ONLY: measure_clock_only,
    TOKENLAT_NO_FINISH: measure_tokenlat_without_finish,
}


# --- correctness ----------------------------------------------------------------------------------------------


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def check_repeat(w: Workload, observed: Mapping[str, Observed]) -> list[Check]:
    """The same gaps must land in the same buckets everywhere, and tokenlat must count every one of them."""
    tl, naive, prom = observed[TOKENLAT], observed[NAIVE], observed[PROMETHEUS]
    checks = [
        Check(
            f"tokenlat {semconv.INTER_TOKEN_LATENCY} count == requests x (tokens - 1)",
            tl.count == w.total_gaps,
            f"{tl.count:,} exported, {w.total_gaps:,} expected",
        ),
        Check(
            "naive OTel token counter == requests x tokens",
            naive.counted_tokens == w.total_tokens,
            f"{naive.counted_tokens:,} counted, {w.total_tokens:,} expected",
        ),
    ]
    for other, name in ((naive, NAIVE), (prom, PROMETHEUS)):
        same_sets = set(tl.histograms) == set(other.histograms)
        same_buckets = same_sets and all(tl.histograms[k].buckets == other.histograms[k].buckets for k in tl.histograms)
        # Sums differ only by floating-point summation order (tokenlat adds per request, then merges).
        same_sums = same_sets and all(
            math.isclose(tl.histograms[k].total, other.histograms[k].total, rel_tol=1e-9) for k in tl.histograms
        )
        checks.append(
            Check(
                f"tokenlat bucket counts == {name} bucket counts, per attribute set",
                same_buckets,
                f"{len(tl.histograms)} attribute sets, {tl.count:,} vs {other.count:,} gaps",
            )
        )
        checks.append(Check(f"tokenlat sums == {name} sums (rel 1e-9)", same_sums, "per attribute set"))
    return checks


def merge_checks(per_repeat: Sequence[Sequence[Check]]) -> list[Check]:
    """One line per check name, in first-seen order: passed only if it passed every time it ran; the detail of
    its first failure, else of its last run. A check that ran in some repeats only counts where it ran."""
    runs: dict[str, list[Check]] = {}
    for checks in per_repeat:
        for check in checks:
            runs.setdefault(check.name, []).append(check)
    merged: list[Check] = []
    for name, same in runs.items():
        failed = [c for c in same if not c.ok]
        merged.append(Check(name, not failed, (failed[0] if failed else same[-1]).detail))
    return merged


# --- the run and its figures ----------------------------------------------------------------------------------


@dataclass
class Result:
    workload: Workload
    repeat: int
    elapsed_ns: dict[str, list[int]]  # per approach, one total per repeat
    checks: list[Check]
    machine: dict[str, str]

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def raw(self, approach: str) -> float:
        """Median CPU nanoseconds per streamed token, loop included."""
        return statistics.median(self.elapsed_ns[approach]) / self.workload.total_tokens

    def added(self, approach: str) -> float:
        """What recording adds per token: the raw figure less the baseline loop's."""
        return self.raw(approach) - self.raw(BASELINE)

    def times_cheaper(self, reference: str, approach: str) -> float | None:
        """How many times less than ``reference`` the approach adds per token (None when it adds nothing)."""
        mine = self.added(approach)
        return self.added(reference) / mine if mine > 0 else None

    def targets(self) -> list[tuple[str, bool, str]]:
        vs_naive = self.times_cheaper(NAIVE, TOKENLAT)
        tl, prom = self.added(TOKENLAT), self.added(PROMETHEUS)
        return [
            (
                f"tokenlat >= {TARGET_VS_NAIVE:g}x cheaper than naive OTel per token",
                vs_naive is None or vs_naive >= TARGET_VS_NAIVE,
                "tokenlat adds nothing measurable" if vs_naive is None else f"{vs_naive:.1f}x",
            ),
            (
                "tokenlat not dearer than prometheus_client per token",
                tl <= prom,
                f"{tl:,.0f} ns vs {prom:,.0f} ns added per token",
            ),
        ]


def machine() -> dict[str, str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # nproc counts the CPUs this process may run on, which is what matters; cpu_count is the fallback.
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0
    return {
        "nproc": str(cpus),
        "CPU": cpu,
        "Python": f"{platform.python_implementation()} {platform.python_version()}",
        "opentelemetry-sdk": importlib.metadata.version("opentelemetry-sdk"),
        "prometheus-client": importlib.metadata.version("prometheus-client"),
        "OS": f"{platform.system()} {platform.release()}",
    }


def run(requests: int, tokens: int, repeat: int, seed: int = 1, progress: Progress | None = None) -> Result:
    say = progress or (lambda _: None)
    w = make_workload(requests, tokens, seed)
    # A short warm-up of every approach, uncounted: first calls pay for imports, code-object caches and the SDK's
    # first-use setup, which a long-running server pays once.
    warm = make_workload(min(requests, 50), tokens, seed + 1)
    for approach in ORDER:
        MEASURE[approach](warm)
    elapsed: dict[str, list[int]] = {a: [] for a in ORDER}
    per_repeat: list[list[Check]] = []
    for i in range(repeat):
        observed: dict[str, Observed] = {}
        for approach in ORDER:
            ns, observed[approach] = MEASURE[approach](w)
            elapsed[approach].append(ns)
            say(f"repeat {i + 1}/{repeat}: {approach:<24} {ns / w.total_tokens:>9,.0f} ns/token")
        per_repeat.append(check_repeat(w, observed))
    return Result(w, repeat, elapsed, merge_checks(per_repeat), machine())


def _ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.2f}"


def table_rows(result: Result) -> list[tuple[str, str, str, str, str]]:
    rows = [
        (
            a,
            f"{result.raw(a):,.0f}",
            f"{result.added(a):,.0f}",
            _ratio(result.times_cheaper(NAIVE, a)),
            _ratio(result.times_cheaper(PROMETHEUS, a)),
        )
        for a in RECORDERS
    ]
    rows.append((BASELINE, f"{result.raw(BASELINE):,.0f}", "0", "", ""))
    return rows


HEADERS = (
    "approach",
    "ns/token raw",
    "ns/token added",
    "x cheaper than naive OTel",
    "x cheaper than prometheus_client",
)


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A table for the terminal: the first column left-aligned, the figures right-aligned (every bench's)."""
    table = [tuple(headers), *rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(headers))]
    lines = [
        "  ".join(cell.ljust(widths[i]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(row))
        for row in table
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The same table for docs/benchmarks.md, figures right-aligned."""
    return [
        "| " + " | ".join(headers) + " |",
        "|---|" + "---:|" * (len(headers) - 1),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def notes(result: Result) -> list[str]:
    """What the table does not say: the clock's share, where tokenlat's cost goes, and the spread of repeats."""
    w = result.workload
    per_token = result.added(TOKENLAT_NO_FINISH)
    finish = result.raw(TOKENLAT) - result.raw(TOKENLAT_NO_FINISH)
    spread = ", ".join(
        f"{a} {min(result.elapsed_ns[a]) / w.total_tokens:,.0f}-{max(result.elapsed_ns[a]) / w.total_tokens:,.0f}"
        for a in RECORDERS
    )
    return [
        "'added' = raw - baseline. It includes one read of the fake clock per token"
        f" ({result.added(CLOCK_ONLY):,.0f} ns here), the same for every approach.",
        "'x cheaper' = the reference's added cost / this row's added cost.",
        f"tokenlat's added {result.added(TOKENLAT):,.0f} ns/token splits into request() + tokens():"
        f" {per_token:,.0f} ns/token, and finish(): {finish:,.0f} ns/token amortised, i.e."
        f" {finish * w.tokens / 1000:,.1f} us per request (it records TTFT, TPOT, duration and output-token usage,"
        " which the other two approaches do not do, and merges the request's gaps).",
        f"Spread of raw ns/token over the repeats (min-max): {spread}.",
    ]


def report(result: Result) -> str:
    w = result.workload
    lines = [
        f"{w.requests:,} requests x {w.tokens} tokens ({w.total_tokens:,} tokens), median of {result.repeat}"
        " interleaved repeats, process CPU time",
        "",
        text_table(HEADERS, table_rows(result)),
        "",
        *notes(result),
        "",
        *verdict_lines(result.targets(), result.checks),
    ]
    return "\n".join(lines)


def verdict_lines(targets: Iterable[tuple[str, bool, str]], checks: Iterable[Check]) -> list[str]:
    """The targets met or missed and the correctness checks, as the text report prints them."""
    return [
        "targets:",
        *(f"  [{'met' if ok else 'MISSED'}] {name}: {detail}" for name, ok, detail in targets),
        "correctness:",
        *(f"  [{'ok' if c.ok else 'FAILED'}] {c.name}: {c.detail}" for c in checks),
    ]


# --- docs/benchmarks.md ---------------------------------------------------------------------------------------


def markdown_preamble(command: str, workload: str, machine_info: dict[str, str]) -> list[str]:
    """The lines every bench's figures open with: the command, when it ran, the workload and the machine."""
    return [
        f"Figures from `{command}`, run {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.",
        "",
        f"- Workload: {workload}",
        "- Machine: " + ", ".join(f"{k} {v}" for k, v in machine_info.items()) + ".",
        "",
    ]


def markdown_verdicts(targets: Iterable[tuple[str, bool, str]], checks: Iterable[Check], checked: str) -> list[str]:
    """The targets met or missed and the correctness checks (``checked`` says when), as docs/benchmarks.md has them."""
    return [
        "Targets:",
        "",
        *(f"- {'Met' if ok else '**Missed**'}: {name} ({detail})." for name, ok, detail in targets),
        "",
        f"Correctness, checked {checked}:",
        "",
        *(f"- {'passed' if c.ok else '**FAILED**'}: {c.name} ({c.detail})." for c in checks),
    ]


def markdown_figures(result: Result, command: str) -> str:
    w = result.workload
    workload = (
        f"{w.requests:,} requests x {w.tokens} tokens = {w.total_tokens:,} streamed tokens"
        f" ({w.total_gaps:,} inter-token gaps), 4 attribute sets of 5 keys, seed {w.seed};"
        f" median of {result.repeat} interleaved repeats."
    )
    out = [
        *markdown_preamble(command, workload, result.machine),
        *markdown_table(HEADERS, table_rows(result)),
        "",
        *(f"- {line}" for line in notes(result)),
        "",
        *markdown_verdicts(result.targets(), result.checks, "in the same run (every repeat)"),
    ]
    return "\n".join(out)


# The prose lives in docs/benchmarks.md; a document without the markers gets just a heading and the figures.
SECTION_HEADING = "## Hot path: CPU per streamed token"


def write_markdown(
    path: Path, figures: str, *, begin: str = BEGIN, end: str = END, heading: str = SECTION_HEADING
) -> None:
    """Replace what is between the markers in ``path`` (creating the file, or appending the section, as needed).

    ``begin``, ``end`` and ``heading`` default to this benchmark's; other benchmarks pass their own.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if begin not in text or end not in text:
        text = f"{text.rstrip()}\n\n{heading}\n\n{begin}\n{end}\n"
    head, rest = text.split(begin, 1)
    _, tail = rest.split(end, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{head}{begin}\n{figures}\n{end}{tail}")


# --- entry point ----------------------------------------------------------------------------------------------


def _positive(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}")
        return value

    return parse


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.hot_path", description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--requests", type=_positive(1), default=2000, help="requests per run (default 2000)")
    # At least two tokens: with one there is no inter-token gap to record.
    parser.add_argument("--tokens", type=_positive(2), default=64, help="tokens per request (default 64)")
    parser.add_argument("--repeat", type=_positive(1), default=5, help="interleaved repeats, median taken (default 5)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the gap generator (default 1)")
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="rewrite the figures section of this file")
    args = parser.parse_args(argv)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run(args.requests, args.tokens, args.repeat, args.seed, progress)
    print(report(result))
    if not result.passed:
        print("hot_path: correctness check FAILED; figures not written", file=sys.stderr)
        return 1
    if args.markdown is not None:
        command = "make bench"
        if (args.requests, args.tokens, args.repeat, args.seed) != (2000, 64, 5, 1):
            command = (
                f"python -m bench.hot_path --requests {args.requests} --tokens {args.tokens}"
                f" --repeat {args.repeat} --seed {args.seed}"
            )
        write_markdown(args.markdown, markdown_figures(result, command))
        progress(f"hot_path: figures written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
