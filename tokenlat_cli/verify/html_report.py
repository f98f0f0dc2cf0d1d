"""The verify report as one self-contained HTML page (``tokenlat verify --html``): pictures people look at.

The table tells whether the run passed; the page shows why, per latency metric: the true distribution as an
empirical CDF on a log time axis, with the true p50/p90/p95/p99 and what the backend answered marked on it, so
the gap between answer and truth is visible at a glance. Everything is inline (CSS and SVG, no script, no
network, no fonts to fetch): the page is a CI artifact or a mail attachment that must open anywhere, offline.
Every text from the run is escaped. The CDF polyline is thinned to a pixel budget, so the page stays small
however many values the run had (ten thousand inter-token gaps and more).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from html import escape

from tokenlat import semconv
from tokenlat.histograms import EXPONENTIAL_SCALE
from tokenlat_cli.verify.checks import QUANTILES, Check
from tokenlat_cli.verify.report import LatencyDistribution, Report, _cell
from tokenlat_cli.verify.statistics import true_quantile

# Titles people read; the Prometheus name is shown under each.
METRIC_TITLES = {
    semconv.prometheus_name(semconv.TTFT_SPEC): "Time to first token (TTFT)",
    semconv.prometheus_name(semconv.TPOT_SPEC): "Time per output token (TPOT)",
    semconv.prometheus_name(semconv.DURATION_SPEC): "Request duration",
    semconv.prometheus_name(semconv.ITL_SPEC): "Inter-token latency",
}
# The CDF polyline keeps at most about this many points: beyond a point per pixel or two nothing more is visible.
MAX_CDF_POINTS = 500
# A low tail stretching the axis by more than this factor below the 0.1% quantile is clipped (and said so): one
# odd 10 us gap would otherwise squeeze the whole distribution into the right third of the chart.
LOW_TAIL_FACTOR = 2.0

# Chart geometry (SVG user units; the SVG scales to its column). The legend sits above the plot, never on data.
WIDTH, HEIGHT = 560, 350
LEFT, RIGHT, TOP, BOTTOM = 52, 18, 42, 46
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
CHAR_W = 6.3  # about the width of an 11px tick label character, to keep labels from overlapping
LEGEND_CHAR_W = 6.8  # the same for the 12px legend

CURVE = "#1f6fb2"  # the true distribution and the true quantiles
ANSWER = "#e8590c"  # what the backend answered
PASS_COLOUR, FAIL_COLOUR = "#2b8a3e", "#c92a2a"


def render_html(report: Report) -> str:
    """The whole page: header, one chart and table per latency metric, then every check."""
    verdict = "PASSED" if report.passed else "FAILED"
    title = f"tokenlat verify: {report.profile} {verdict}"
    body = "\n".join(
        [_header(report), _charts(report), _checks_table(report.checks), "<footer>Written by tokenlat verify.</footer>"]
    )
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n<style>{_colours()}{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def _colours() -> str:
    """The palette as CSS variables: the charts, the badges and the tests' pixel counts share one definition."""
    return f":root {{ --curve: {CURVE}; --answer: {ANSWER}; --pass: {PASS_COLOUR}; --fail: {FAIL_COLOUR}; }}"


# --- header -------------------------------------------------------------------------------------------------------


def _header(report: Report) -> str:
    """Verdict first (colour and word), then what was run: the settings that decide what the numbers mean."""
    failed = [c for c in report.checks if not c.passed]
    verdict = "PASSED" if report.passed else "FAILED"
    css = "pass" if report.passed else "fail"
    summary = f"{len(report.checks) - len(failed)} of {len(report.checks)} checks passed"
    parts = [
        f'<header class="{css}">',
        f'<h1>tokenlat verify <span class="badge {css}">{verdict}</span></h1>',
        f'<p class="summary">profile <strong>{escape(report.profile)}</strong> &middot; {escape(summary)}</p>',
        _settings(report.settings),
    ]
    if failed:
        items = "".join(f'<li><a href="#{_check_id(c)}">{escape(c.name)}</a></li>' for c in failed)
        parts.append(f'<div class="failed"><h3>Failed checks</h3><ul>{items}</ul></div>')
    if report.notes:
        parts.append('<ul class="notes">' + "".join(f"<li>{escape(n)}</li>" for n in report.notes) + "</ul>")
    parts.append("</header>")
    return "\n".join(parts)


def _settings(settings: dict[str, object]) -> str:
    """The four settings that frame every number, prominent; the rest (seed, timings...) in small print."""
    histogram = settings.get("histogram")
    native = histogram == "exponential"
    kind = {"exponential": "native (exponential)", "explicit": "classic (explicit buckets)"}.get(
        str(histogram), str(histogram)
    )
    # Native histograms ignore the profile's classic layout: show the buckets that were used.
    buckets = f"exponential, scale {EXPONENTIAL_SCALE}" if native else str(settings.get("buckets", "-"))
    main = [
        ("requests", str(settings.get("requests", "-"))),
        ("concurrency", str(settings.get("concurrency", "-"))),
        ("histograms", kind),
        ("buckets", buckets),
    ]
    shown = {"requests", "concurrency", "histogram", "buckets"}
    rest = [(key.replace("_", " "), _setting_value(value)) for key, value in settings.items() if key not in shown]
    chips = "".join(f"<div><dt>{escape(k)}</dt><dd>{escape(v)}</dd></div>" for k, v in main)
    small = " &middot; ".join(f"{escape(k)} <code>{escape(v)}</code>" for k, v in rest)
    return f'<dl class="settings">{chips}</dl>\n<p class="more">{small}</p>'


def _setting_value(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return _cell(value)


# --- charts -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantileRow:
    """One quantile of one metric: the truth, the backend's answer, and the verdict of its "vs the truth" row."""

    q: float
    truth: float | None  # None: the run has no true values (no request succeeded)
    answered: float | None  # None: no usable answer (no data, NaN or infinite)
    check: Check | None

    @property
    def error(self) -> float | None:
        if self.answered is None or not self.truth:
            return None
        return (self.answered - self.truth) / self.truth

    @property
    def label(self) -> str:
        return f"p{self.q * 100:g}"


def quantile_rows(dist: LatencyDistribution, checks: Sequence[Check]) -> list[QuantileRow]:
    """The rows of a metric's table, with the truth computed as the checks compute it (nearest rank)."""
    by_name = {c.name: c for c in checks}
    rows = []
    for q in sorted(set(QUANTILES) | set(dist.answered)):
        answered = dist.answered.get(q)
        usable = answered if answered is not None and math.isfinite(answered) else None
        check = by_name.get(f"{dist.metric} p{q * 100:g} vs the truth")
        truth = true_quantile(dist.truth, q) if dist.truth else None
        rows.append(QuantileRow(q, truth, usable, check))
    return rows


def _charts(report: Report) -> str:
    if not report.distributions:
        return ""
    intro = (
        '<p class="intro">Each curve is the true distribution of a latency the load measured: the share of values '
        "at or below each time (log scale). "
        '<span class="nowrap"><span class="key ring"></span> marks</span> the true p50/p90/p95/p99, '
        '<span class="nowrap"><span class="key diamond"></span> what</span> the backend answered from its histograms '
        "at the same quantile: "
        "the horizontal gap between the two is the error users would see.</p>"
    )
    sections = [_metric_section(d, quantile_rows(d, report.checks)) for d in report.distributions]
    return f'<section class="charts">{intro}<div class="grid">{"".join(sections)}</div></section>'


def _metric_section(dist: LatencyDistribution, rows: list[QuantileRow]) -> str:
    title = METRIC_TITLES.get(dist.metric, dist.metric)
    subtitle = f"{len(dist.truth):,} true values &middot; {escape(dist.histograms)} histograms"
    lo, hi, clipped = x_domain(dist.truth, rows)
    note = ""
    if clipped:
        note = (
            f'<p class="clip">{clipped:,} value{"s" if clipped != 1 else ""} below {escape(_seconds(lo))} '
            "(a far low tail) drawn at the left edge of the axis</p>"
        )
    return (
        f'<article class="metric" id="{escape(dist.metric)}">'
        f"<h2>{escape(title)}</h2>"
        f'<p class="prom"><code>{escape(dist.metric)}</code><br>{subtitle}</p>'
        f"{cdf_svg(dist, rows, Frame(lo, hi))}{note}{_quantile_table(rows)}</article>"
    )


@dataclass(frozen=True)
class Frame:
    """The plot area and its log-x / linear-y scales: value (s) and quantile to SVG coordinates."""

    lo: float
    hi: float

    def x(self, value: float) -> float:
        clamped = min(max(value, self.lo), self.hi)
        return LEFT + PLOT_W * (math.log10(clamped / self.lo) / math.log10(self.hi / self.lo))

    @staticmethod
    def y(q: float) -> float:
        return TOP + PLOT_H * (1 - q)


def x_domain(truth: Sequence[float], rows: Sequence[QuantileRow]) -> tuple[float, float, int]:
    """(lo, hi, values clipped below lo): every true quantile and answer fit, and the whole upper tail; a far low
    tail is clipped (LOW_TAIL_FACTOR). Padded a little so that no marker sits on the frame."""
    positive = [v for v in truth if v > 0]
    marks = [v for r in rows for v in (r.truth, r.answered) if v is not None and v > 0]
    if not positive and not marks:
        return 1e-3, 1.0, 0
    low_rank = positive[max(0, math.ceil(0.001 * len(positive)) - 1)] if positive else min(marks)
    lo = min([*positive[:1], *marks])
    clipped = 0
    if lo < low_rank / LOW_TAIL_FACTOR:
        lo = min([low_rank, *marks])
        clipped = sum(1 for v in truth if v < lo)
    hi = max([*positive[-1:], *marks])
    if hi <= lo * 1.001:  # one value (or all equal): show a factor of two around it
        lo, hi = lo / 1.4, hi * 1.4
    pad = (math.log10(hi) - math.log10(lo)) * 0.04
    return 10 ** (math.log10(lo) - pad), 10 ** (math.log10(hi) + pad), clipped


def cdf_points(values: Sequence[float], frame: Frame, budget: int = MAX_CDF_POINTS) -> list[tuple[float, float]]:
    """The empirical CDF's step path (up at each value, then across) in SVG coordinates, thinned to ``budget``.

    The path only goes right and up inside the plot, so its length is at most PLOT_W + PLOT_H; keeping a vertex
    only once the path has moved ``(PLOT_W + PLOT_H) / budget`` since the last one kept bounds the points by
    budget + 2, whatever the number of values, and loses nothing visible (under two pixels).
    """
    n = len(values)
    if n == 0:
        return []
    step = (PLOT_W + PLOT_H) / budget
    points: list[tuple[float, float]] = []
    last_x, last_y = math.inf, math.inf
    for i, value in enumerate(values):
        x = frame.x(value)  # clamped into the frame: a clipped low tail is drawn at the left edge
        for y in (frame.y(i / n), frame.y((i + 1) / n)):
            if not points or abs(x - last_x) + abs(y - last_y) >= step:
                points.append((x, y))
                last_x, last_y = x, y
    end = (frame.x(values[-1]), frame.y(1.0))
    if points[-1] != end:
        points.append(end)
    return points


def cdf_svg(dist: LatencyDistribution, rows: Sequence[QuantileRow], frame: Frame) -> str:
    """The chart: grid, axes with readable ticks, the CDF, the quantile guides and markers, a legend on top."""
    title = METRIC_TITLES.get(dist.metric, dist.metric)
    parts = [
        f'<svg class="cdf" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}: empirical CDF '
        'of the true values with the true and the answered quantiles">',
        f'<rect class="plot" x="{LEFT}" y="{TOP}" width="{PLOT_W}" height="{PLOT_H}"/>',
        _x_axis(frame),
        _y_axis(),
    ]
    points = cdf_points(dist.truth, frame)
    if points:
        path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
        parts.append(f'<polyline class="curve" points="{path}"/>')
    else:
        parts.append(f'<text class="empty" x="{LEFT + PLOT_W / 2}" y="{TOP + PLOT_H / 2}">no values</text>')
    parts.extend(_quantile_marks(frame, row) for row in rows)
    parts.append(_legend(len(dist.truth), dist.histograms))
    parts.append("</svg>")
    return "\n".join(parts)


def _x_axis(frame: Frame) -> str:
    """Log-scale gridlines at every 1..9 x 10^k (faint) and labelled ticks that do not overlap."""
    parts = []
    for value in _mantissa_values(frame.lo, frame.hi, range(1, 10)):
        parts.append(f'<line class="minor" x1="{frame.x(value):.1f}" y1="{TOP}" x2="{frame.x(value):.1f}" '
                     f'y2="{TOP + PLOT_H}"/>')  # fmt: skip
    for value in log_ticks(frame):
        x = frame.x(value)
        parts.append(f'<line class="grid" x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + PLOT_H}"/>')
        parts.append(f'<line class="tick" x1="{x:.1f}" y1="{TOP + PLOT_H}" x2="{x:.1f}" y2="{TOP + PLOT_H + 5}"/>')
        parts.append(f'<text class="xt" x="{x:.1f}" y="{TOP + PLOT_H + 18}">{escape(_tick_label(value))}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{TOP + PLOT_H}" x2="{LEFT + PLOT_W}" y2="{TOP + PLOT_H}"/>')
    parts.append(f'<text class="xtitle" x="{LEFT + PLOT_W / 2}" y="{HEIGHT - 6}">latency (log scale)</text>')
    return "\n".join(parts)


def _y_axis() -> str:
    parts = []
    for q in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = Frame.y(q)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + PLOT_W}" y2="{y:.1f}"/>')
        parts.append(f'<text class="yt" x="{LEFT - 7}" y="{y + 4:.1f}">{q:g}</text>')
    parts.append(f'<line class="axis" x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + PLOT_H}"/>')
    mid = TOP + PLOT_H / 2
    parts.append(f'<text class="ytitle" transform="translate(14 {mid}) rotate(-90)">share of values &#8804; x</text>')
    return "\n".join(parts)


def _quantile_marks(frame: Frame, row: QuantileRow) -> str:
    """A dashed guide from the quantile's label to its markers, the truth as a ring, the answer as a diamond on top
    (inside the ring when they agree), and a bar between them when they do not."""
    y = frame.y(row.q)
    xt = None if row.truth is None else frame.x(row.truth)
    xa = None if row.answered is None else frame.x(row.answered)
    parts = [f'<text class="qlabel" x="{LEFT + 5}" y="{y + 3.5:.1f}">{row.label}</text>']
    xs = [x for x in (xt, xa) if x is not None]
    if xs and min(xs) - 8 > LEFT + 34:
        parts.append(f'<line class="guide" x1="{LEFT + 30}" y1="{y:.1f}" x2="{min(xs) - 8:.1f}" y2="{y:.1f}"/>')
    if xt is not None and xa is not None:
        parts.append(f'<line class="gap" x1="{xt:.1f}" y1="{y:.1f}" x2="{xa:.1f}" y2="{y:.1f}"/>')
    if xt is not None and row.truth is not None:
        tip = f"{row.label} true: {_seconds(row.truth)}"
        parts.append(f'<circle class="truth" cx="{xt:.1f}" cy="{y:.1f}" r="6"><title>{escape(tip)}</title></circle>')
    if xa is not None and row.answered is not None:
        error = "" if row.error is None else f" ({row.error:+.2%})"
        tip = f"{row.label} answered: {_seconds(row.answered)}{error}"
        parts.append(f'<path class="answer" d="{_diamond(xa, y, 4.6)}"><title>{escape(tip)}</title></path>')
    else:
        parts.append(f'<text class="nodata" x="{(xt or LEFT + 30) + 10:.1f}" y="{y + 3.5:.1f}">no answer</text>')
    return "\n".join(parts)


def _diamond(x: float, y: float, r: float) -> str:
    return f"M{x:.1f} {y - r:.1f}L{x + r:.1f} {y:.1f}L{x:.1f} {y + r:.1f}L{x - r:.1f} {y:.1f}Z"


def _legend(n: int, histograms: str) -> str:
    """The three symbols and what they mean, in a row above the plot, each placed after the previous one's text."""
    y = 18
    texts = [f"true values (n = {n:,})", "true quantile", f"backend\u2019s answer ({histograms})"]
    widths = [22, 12, 12]  # of the symbols
    xs = [LEFT - 30.0]
    for width, text in zip(widths[:-1], texts[:-1], strict=True):
        xs.append(xs[-1] + width + 6 + len(text) * LEGEND_CHAR_W + 18)
    symbols = [
        f'<line class="curve" x1="{xs[0]:.0f}" y1="{y}" x2="{xs[0] + 22:.0f}" y2="{y}"/>',
        f'<circle class="truth" cx="{xs[1] + 6:.0f}" cy="{y}" r="6"/>',
        f'<path class="answer" d="{_diamond(xs[2] + 6, y, 4.6)}"/>',
    ]
    labels = [
        f'<text class="legend" x="{x + width + 6:.0f}" y="{y + 4}">{escape(text)}</text>'
        for x, width, text in zip(xs, widths, texts, strict=True)
    ]
    return "\n".join(symbols + labels)


def log_ticks(frame: Frame) -> list[float]:
    """Labelled ticks for a log axis, readable at any width of range: decades when the range spans several,
    1-2-5 steps for one or two, plain linear steps inside a decade (TPOT often spans a factor of 1.5). Ticks
    that would collide with a more important one are dropped (decades beat 2s and 5s, which beat the rest)."""
    lo, hi = frame.lo, frame.hi
    candidates: list[tuple[int, float]] = []
    for priority, mantissas in enumerate(((1,), (2, 5), (3, 4, 6, 7, 8, 9))):
        candidates += [(priority, v) for v in _mantissa_values(lo, hi, mantissas)]
    if sum(1 for p, _ in candidates if p <= 1) < 3:  # narrow range: linear nice steps
        step = _nice_step((hi - lo) / 8)
        start = math.ceil(lo / step)
        candidates += [(3, k * step) for k in range(start, int(hi / step) + 1) if lo <= k * step <= hi]
    placed: list[tuple[float, float]] = []  # (x, half label width)
    chosen = []
    for _, value in sorted(candidates):
        x, half = frame.x(value), len(_tick_label(value)) * CHAR_W / 2
        if all(abs(x - px) >= half + ph + 8 for px, ph in placed):
            placed.append((x, half))
            chosen.append(value)
    return sorted(set(chosen))


def _mantissa_values(lo: float, hi: float, mantissas: Iterable[int]) -> list[float]:
    """Every m x 10^k (m in mantissas) within [lo, hi], rounded so that labels print clean."""
    values = []
    ms = list(mantissas)
    for k in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in ms:
            v = float(f"{m}e{k}")
            if lo <= v <= hi:
                values.append(v)
    return values


def _nice_step(raw: float) -> float:
    """The 1, 2 or 5 x 10^k nearest above ``raw``."""
    exponent = math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if m * 10**exponent >= raw:
            return float(f"{m}e{exponent}")
    return float(f"1e{exponent + 1}")  # pragma: no cover - the loop returns at m=10


def _tick_label(value: float) -> str:
    """Tick labels in the unit that reads best: 5 ms, 250 ms, 1.5 s, 800 us."""
    return _seconds(value)


def _seconds(value: float, digits: int = 4) -> str:
    """A duration in seconds, in s, ms or us as its size asks: '126.4 ms' reads faster than '0.1264'."""
    if value >= 1:
        return f"{value:.{digits}g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.{digits}g} ms"
    return f"{value * 1e6:.{digits}g} \u00b5s"


def _quantile_table(rows: Sequence[QuantileRow]) -> str:
    """Under the chart, the numbers behind the markers; the error cell coloured by its check's verdict."""
    lines = []
    targets = {_cell(r.check.tolerance) for r in rows if r.check is not None}
    for row in rows:
        truth = "no values" if row.truth is None else _seconds(row.truth)
        answered = "no data" if row.answered is None else _seconds(row.answered)
        error = "-" if row.error is None else f"{row.error:+.2%}"
        css, tip = "", ""
        if row.check is not None:
            css = ' class="ok"' if row.check.passed else ' class="bad"'
            tip = f' title="{escape(row.check.detail)}"'
        lines.append(
            f"<tr><th>{row.label}</th><td>{escape(truth)}</td><td>{escape(answered)}</td>"
            f"<td{css}{tip}>{escape(error)}</td></tr>"
        )
    caption = ""
    if len(targets) == 1:
        target = targets.pop()
        text = (
            f"target: relative error within {float(target):.0%}"
            if _is_number(target)
            else "no target: these buckets promise no accuracy"
        )
        caption = f"<caption>{escape(text)}</caption>"
    head = "<tr><th>quantile</th><th>truth</th><th>answered</th><th>relative error</th></tr>"
    return f'<table class="quantiles">{caption}<thead>{head}</thead><tbody>{"".join(lines)}</tbody></table>'


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --- checks -------------------------------------------------------------------------------------------------------


def _checks_table(checks: Sequence[Check]) -> str:
    """Every check, as the terminal table shows it, the result coloured and failed rows tinted."""
    head = "".join(f"<th>{h}</th>" for h in ("check", "expected", "observed", "error", "tolerance", "result", "detail"))
    rows = []
    for check in checks:
        result = "PASS" if check.passed else "FAIL"
        css = "pass" if check.passed else "fail"
        cells = [_cell(check.expected), _cell(check.observed), _cell(check.error), _cell(check.tolerance)]
        rows.append(
            f'<tr class="{css}" id="{_check_id(check)}"><td class="name">{_breakable(check.name)}</td>'
            + "".join(f'<td class="num">{escape(c)}</td>' for c in cells)
            + f'<td><span class="badge {css}">{result}</span></td><td class="detail">{escape(check.detail)}</td></tr>'
        )
    return (
        '<section class="checks"><h2>Checks</h2>'
        f'<table class="checks"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></section>'
    )


def _breakable(name: str) -> str:
    """Escaped, with a line-break opportunity after each underscore: Prometheus names are long single words."""
    return escape(name).replace("_", "_<wbr>")


def _check_id(check: Check) -> str:
    return "check-" + "".join(ch if ch.isalnum() else "-" for ch in check.name)


STYLE = """
:root { color-scheme: light; --ink: #1f2328; --muted: #5f6b7a; --line: #d8dee4; --bg: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 1240px; padding: 24px 28px 40px; color: var(--ink); background: #fff;
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "DejaVu Sans Mono", monospace; font-size: 12px; }
header { border-left: 6px solid var(--pass); background: var(--bg); padding: 14px 20px; border-radius: 6px; }
header.fail { border-left-color: var(--fail); }
h1 { margin: 0 0 4px; font-size: 22px; }
h2 { margin: 0; font-size: 18px; }
h3 { margin: 0 0 4px; font-size: 14px; }
.summary { margin: 0 0 10px; color: var(--muted); }
.summary strong { color: var(--ink); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; color: #fff; font-size: 12px;
  font-weight: 600; letter-spacing: .03em; vertical-align: middle; }
h1 .badge { font-size: 14px; padding: 2px 10px; }
.badge.pass { background: var(--pass); }
.badge.fail { background: var(--fail); }
dl.settings { display: flex; flex-wrap: wrap; gap: 10px; margin: 0 0 6px; }
dl.settings div { background: #fff; border: 1px solid var(--line); border-radius: 6px; padding: 4px 12px; }
dl.settings dt { font-size: 11px; color: var(--muted); text-transform: uppercase; letter-spacing: .04em; }
dl.settings dd { margin: 0; font-weight: 600; }
.more { margin: 0; font-size: 12px; color: var(--muted); }
.failed { margin-top: 10px; color: var(--fail); }
.failed ul, .notes { margin: 0; padding-left: 20px; }
.failed ul { columns: 2 360px; column-gap: 28px; }
.failed a { color: var(--fail); }
.intro { color: var(--muted); margin: 18px 0 10px; max-width: 900px; }
.nowrap { white-space: nowrap; }
.key { display: inline-block; width: 11px; height: 11px; vertical-align: -1px; }
.key.ring { border: 2px solid var(--curve); border-radius: 50%; }
.key.diamond { background: var(--answer); transform: rotate(45deg) scale(.8); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(500px, 1fr)); gap: 18px; }
article.metric { border: 1px solid var(--line); border-radius: 8px; padding: 14px 16px 10px; }
.prom { margin: 2px 0 4px; color: var(--muted); font-size: 12px; }
svg.cdf { display: block; width: 100%; height: auto; }
svg .plot { fill: #fcfcfd; stroke: none; }
svg .minor { stroke: #f0f2f4; stroke-width: 1; }
svg .grid { stroke: #e1e5ea; stroke-width: 1; }
svg .axis, svg .tick { stroke: #6e7781; stroke-width: 1; }
svg text { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; fill: #3d4650; }
svg .xt { font-size: 11px; text-anchor: middle; }
svg .yt { font-size: 11px; text-anchor: end; }
svg .xtitle, svg .ytitle { font-size: 12px; text-anchor: middle; fill: var(--muted); }
svg .legend { font-size: 12px; }
svg .qlabel { font-size: 10px; font-weight: 600; fill: var(--muted); }
svg .nodata, svg .empty { font-size: 11px; fill: var(--fail); }
p.clip { margin: 0 0 2px; font-size: 11px; color: var(--muted); text-align: center; }
svg .empty { text-anchor: middle; }
svg .curve { fill: none; stroke: var(--curve); stroke-width: 2; stroke-linejoin: round; }
svg .guide { stroke: #9aa4af; stroke-width: 1; stroke-dasharray: 3 3; }
svg .gap { stroke: var(--answer); stroke-width: 2.5; }
svg .truth { fill: #fff; fill-opacity: 0; stroke: var(--curve); stroke-width: 2; }
svg .answer { fill: var(--answer); stroke: #fff; stroke-width: 1; }
table { border-collapse: collapse; }
table.quantiles { margin: 6px auto 4px; font-size: 13px; min-width: 70%; }
table.quantiles caption { caption-side: bottom; font-size: 11px; color: var(--muted); padding-top: 4px; }
table.quantiles th, table.quantiles td { padding: 3px 12px; text-align: right; border-bottom: 1px solid var(--line); }
table.quantiles thead th { color: var(--muted); font-weight: 600; font-size: 12px; }
table.quantiles tbody th { text-align: left; }
td.ok { color: var(--pass); font-weight: 600; }
td.bad { color: var(--fail); font-weight: 700; background: #fff0f0; }
section.checks { margin-top: 28px; }
section.checks h2 { margin-bottom: 8px; }
table.checks { width: 100%; font-size: 12.5px; }
table.checks th { text-align: left; background: var(--bg); border-bottom: 2px solid var(--line); padding: 6px 8px;
  position: sticky; top: 0; }
table.checks td { padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
table.checks td.num { font-variant-numeric: tabular-nums; white-space: nowrap; }
table.checks td.name { max-width: 380px; }
table.checks td.detail { color: var(--muted); }
table.checks tr.fail td { background: #fff0f0; }
table.checks tr.fail td.detail { color: var(--fail); }
footer { margin-top: 24px; font-size: 12px; color: var(--muted); }
"""
