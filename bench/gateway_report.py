"""The gateway bench's tables: per step, in the Collector testbed's shape, next to the testbed's published figures,
and what they mean in tokens (bench/gateway_sizing.py). Text for the terminal, Markdown for docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

from bench.gateway import CLASSIC, GAUGE, LIBRARY, RATE, SERIES, Result
from bench.gateway_load import Step
from bench.gateway_meter import SENT
from bench.gateway_sizing import example_shapes
from bench.hot_path import markdown_preamble, markdown_table, text_table, write_markdown

BEGIN = "<!-- gateway:begin -->"
END = "<!-- gateway:end -->"
SECTION_HEADING = "## Gateway: throughput and memory of the Collector tier"

#: The contrib testbed's published run that is nearest to this one (OTLP metrics in, one Collector, 10,000 points
#: a second in batches of 100, no processors, OTLP out to the testbed's mock backend): the load-test results page,
#: https://open-telemetry.github.io/opentelemetry-collector-contrib/benchmarks/loadtests/, whose data is
#: docs/benchmarks/loadtests/data.js on the repository's benchmarks branch. The latest entry that could be read from
#: here: commit c7385ec, 2023-07-11. CPU is in % of one core (the testbed's process CPU), RAM is RSS.
TESTBED = {
    "Metric10kDPS/OTLP": {"points": 10_000, "cpu_avg": 18.6, "cpu_max": 20.3, "ram_avg": 54, "ram_max": 77},
    "Metric10kDPS/OTLP-HTTP": {"points": 10_000, "cpu_avg": 18.3, "cpu_max": 19.7, "ram_avg": 50, "ram_max": 71},
}
TESTBED_SOURCE = (
    "the contrib testbed's load-test results (https://open-telemetry.github.io/opentelemetry-collector-contrib/"
    "benchmarks/loadtests/, data.js entry for commit c7385ec of 2023-07-11)"
)

TESTBED_HEADERS = (
    "test", "duration s", "CPU avg %", "CPU max %", "RAM avg MiB", "RAM max MiB",
    "offered points", "accepted points", "refused points", "exported points",
)  # fmt: skip
STEP_HEADERS = (
    "sweep", "offered/s", "accepted/s", "refused/s", "exported/s", "Prometheus series", "at the sink",
    "gateway cores", "points/s per core", "queue max", "sink cores", "generator cores", "all processes, cores",
)  # fmt: skip
COMPARE_HEADERS = ("", "points/s", "CPU avg %", "points/s per core", "RAM avg MiB", "RAM max MiB")


def test_name(step: Step) -> str:
    return f"Gateway/{step.metric_type}/{step.offered_rate:,.0f}pps/{step.interval_s:g}s"


def testbed_rows(result: Result) -> list[tuple[str, ...]]:
    """One row per step, as the testbed's TESTRESULTS.md has them (its 'sent' is what the generator offered:
    here accepted + refused, counted by the gateway's receiver)."""
    rows = []
    for s in result.steps:
        w = s.window
        offered = (s.accepted_rate + s.refused_rate) * w.seconds
        rows.append((
            test_name(s), f"{w.seconds:.0f}", f"{w.gateway_cores * 100:.1f}", f"{s.gateway_cores_max * 100:.1f}",
            f"{s.gateway_rss_mib_mean:.0f}", f"{s.gateway_rss_mib_max:.0f}", f"{offered:,.0f}",
            f"{s.accepted_rate * w.seconds:,.0f}", f"{s.refused_rate * w.seconds:,.0f}",
            f"{w.per_second[SENT] * w.seconds:,.0f}",
        ))  # fmt: skip
    return rows


def step_rows(result: Result) -> list[tuple[str, ...]]:
    rows = []
    for s in result.steps:
        w = s.window
        rows.append((
            f"{s.sweep} ({s.metric_type}, {s.interval_s:g} s)", f"{s.offered_rate:,.0f}", f"{s.accepted_rate:,.0f}",
            f"{s.refused_rate:,.0f}", f"{s.exported_rate:,.0f}", f"{s.active_series:,.0f}",
            "-" if s.series_at_sink is None else f"{s.series_at_sink:,.0f} of {s.series_sent:,.0f}",
            f"{w.gateway_cores:.2f}", f"{s.points_per_core:,.0f}", f"{s.queue_max:.0f}", f"{w.sink_cores:.2f}",
            f"{w.generator_cores:.2f}", "-" if w.machine_cores is None else f"{w.machine_cores:.2f}",
        ))  # fmt: skip
    return rows


def compare_rows(result: Result) -> list[tuple[str, ...]]:
    rows = []
    capacity = result.capacity
    if capacity is not None:
        w = capacity.window
        rows.append((
            f"tokenlat gateway, {test_name(capacity)}", f"{capacity.carried_rate:,.0f}",
            f"{w.gateway_cores * 100:.1f}", f"{capacity.points_per_core:,.0f}",
            f"{capacity.gateway_rss_mib_mean:.0f}", f"{capacity.gateway_rss_mib_max:.0f}",
        ))  # fmt: skip
    for name, t in TESTBED.items():
        per_core = t["points"] / (t["cpu_avg"] / 100)
        rows.append((
            f"testbed {name}", f"{t['points']:,}", f"{t['cpu_avg']:.1f}", f"{per_core:,.0f} (extrapolated)",
            f"{t['ram_avg']}", f"{t['ram_max']}",
        ))  # fmt: skip
    return rows


def figure_lines(result: Result) -> list[str]:
    """The figures the docs quote, and the tokens arithmetic."""
    lines = []
    capacity, refusal = result.capacity, result.refusal
    if refusal is not None:
        w = refusal.window
        lines.append(
            f"The memory_limiter started refusing at {test_name(refusal)}: {refusal.accepted_rate:,.0f} points/s"
            f" accepted, {refusal.refused_rate:,.0f}/s refused, {refusal.exported_rate:,.0f}/s exported; gateway"
            f" {w.gateway_cores:.2f} cores ({refusal.accepted_rate / w.gateway_cores:,.0f} points/s and"
            f" {refusal.active_series / w.gateway_cores:,.0f} Prometheus series per core accepted),"
            f" RSS {refusal.gateway_rss_mib_mean:.0f} MiB mean, {refusal.gateway_rss_mib_max:.0f} max, exporter queue"
            f" up to {refusal.queue_max:.0f} batches; sink {w.sink_cores:.2f} cores."
        )
    else:
        lines.append("The memory_limiter refused nowhere in the rate sweep.")
    if capacity is not None:
        where = "the busiest step that exported what it accepted" if capacity.steady else "no step was steady"
        series_per_core = capacity.active_series / capacity.window.gateway_cores
        lines.append(
            f"Capacity, read at {test_name(capacity)} ({where}): {capacity.points_per_core:,.0f} points/s per core"
            f" of gateway CPU; {series_per_core:,.0f} Prometheus series per core at its {capacity.interval_s:g} s"
            f" per series (series per core scale with the export interval: x{15 / capacity.interval_s:g} at 15 s)."
        )
    for which in ("gateway", "sink"):
        slope = result.rss_per_100k_series(which)
        if slope is not None:
            steps = result.sweep(SERIES)
            span = f"{steps[0].prometheus_series:,} to {steps[-1].prometheus_series:,} series"
            lines.append(f"{which.capitalize()} RSS per 100k Prometheus series: {slope:+.1f} MiB (fit over {span}).")
    model = result.cost_model
    if model is not None:
        lines.append(
            f"Gateway CPU per point: {model.per_point * 1e6:.1f} us + {model.per_series * 1e6:.2f} us per Prometheus"
            f" series it becomes (fit from the {GAUGE} step and the {RATE} steps that did not refuse)."
        )
    measured = {kind: result.tokenlat_cpu_per_point(kind) for kind in ("classic", "native")}
    predicted = result.predicted_classic_cpu_per_point()
    if measured[CLASSIC] is not None and predicted is not None:
        lines.append(
            f"A classic tokenlat point (the {LIBRARY} sweep): {measured[CLASSIC] * 1e6:.0f} us measured, the fit"
            f" above predicts {predicted * 1e6:.0f} us ({predicted / measured[CLASSIC] - 1:+.0%})."
        )
    if measured["native"] is not None:
        lines.append(f"A native tokenlat point: {measured['native'] * 1e6:.0f} us measured.")
    lines += [
        f"Tokens, {shape.name}: {shape.arithmetic(cost)}."
        for shape in example_shapes()
        if (cost := measured[shape.histograms]) is not None
    ]
    lines.append(
        "Generator cores: telemetrygen's runs, counted as each is reaped (the library sweep's exporting process is"
        " not counted); all processes: every process on the machine (/proc/stat), this bench's and anything else."
    )
    return lines


def conditions_line(result: Result) -> str:
    c = result.conditions
    limiter = result.memory_limiter
    return (
        f"Gateway: the {result.role} render of the profile, memory_limiter limit {limiter['limit_mib']} MiB, spike"
        f" {limiter['spike_limit_mib']} MiB, check every {limiter['check_interval']}; sink: {result.sink}; load"
        f" average before {c['load_average']}, after {c['load_average_after']} (2 cores, shared by the gateway, the"
        " sink and telemetrygen)."
    )


def report(result: Result) -> str:
    return "\n".join([
        conditions_line(result),
        "",
        text_table(STEP_HEADERS, step_rows(result)),
        "",
        text_table(TESTBED_HEADERS, testbed_rows(result)),
        "",
        text_table(COMPARE_HEADERS, compare_rows(result)),
        "",
        *figure_lines(result),
        "",
        *(f"[{'ok' if c.ok else 'FAILED'}] {c.name}: {c.detail}" for c in result.checks),
    ])  # fmt: skip


def markdown_figures(result: Result, command: str) -> str:
    s = result.settings
    rates = ", ".join(f"{r:,.0f}" for r in s.rates)
    intervals = ", ".join(f"{i:g}" for i in s.series_intervals)
    workload = (
        f"telemetrygen histogram points (16 buckets: 18 Prometheus series each) at {rates} points/s until refused,"
        f" each series once per {s.interval_s:g} s; gauge points at {s.gauge_rate or 0:,.0f}/s;"
        f" {s.series_rate:,.0f} histogram points/s with each series once per {intervals} s;"
        f" at least {s.measure_s:g} s measured per step, after two intervals (at least {s.warmup_s:g} s) of warm-up."
    )
    machine = {k: v for k, v in result.conditions.items() if not k.startswith("load_average")}
    return "\n".join([
        *markdown_preamble(command, workload, machine),
        f"- {conditions_line(result)}",
        "",
        *markdown_table(TESTBED_HEADERS, testbed_rows(result)),
        "",
        *markdown_table(STEP_HEADERS, step_rows(result)),
        "",
        f"Against {TESTBED_SOURCE}:",
        "",
        *markdown_table(COMPARE_HEADERS, compare_rows(result)),
        "",
        *(f"- {line}" for line in figure_lines(result)),
        "",
        "Checked in the same run:",
        "",
        *(f"- {'passed' if c.ok else '**FAILED**'}: {c.name} ({c.detail})." for c in result.checks),
    ])  # fmt: skip


def write_figures(result: Result, path: Path, default_settings: bool) -> None:
    command = "make bench-gateway" if default_settings else "python -m bench.gateway (other settings)"
    write_markdown(path, markdown_figures(result, command), begin=BEGIN, end=END, heading=SECTION_HEADING)
