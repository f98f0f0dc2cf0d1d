"""`tokenlat verify --html`: the page's content, that it is self-contained, escaped and small, and, end to end,
that a real run's page renders in headless Chromium (a missing Chromium fails, as every e2e prerequisite does)."""

from __future__ import annotations

import itertools
import math
import random
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner

from tokenlat import semconv
from tokenlat_cli.commands import verify as verify_command
from tokenlat_cli.main import cli
from tokenlat_cli.verify import html_report
from tokenlat_cli.verify.checks import QUANTILES, Check
from tokenlat_cli.verify.html_report import MAX_CDF_POINTS, METRIC_TITLES, Frame, cdf_points, log_ticks, render_html
from tokenlat_cli.verify.report import LatencyDistribution, Report
from tokenlat_cli.verify.statistics import true_quantile

SPECS = (semconv.TTFT_SPEC, semconv.TPOT_SPEC, semconv.DURATION_SPEC, semconv.ITL_SPEC)
METRICS = [semconv.prometheus_name(s) for s in SPECS]
CHROMIUM_ENV = "TOKENLAT_CHROMIUM_BIN"
ANSWER_RGB = bytes.fromhex(html_report.ANSWER[1:])
CURVE_RGB = bytes.fromhex(html_report.CURVE[1:])


class _Page(HTMLParser):
    """The text of a page, and the text of each of its h2 headings."""

    def __init__(self, markup: str) -> None:
        super().__init__()
        self.chunks: list[str] = []
        self.h2: list[str] = []
        self._in_h2 = False
        self.feed(markup)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")

    def handle_endtag(self, tag: str) -> None:
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data: str) -> None:
        self.chunks.append(data)
        if self._in_h2:
            self.h2[-1] += data

    @property
    def text(self) -> str:
        return "".join(self.chunks)


def _distribution(metric: str, n: int, median: float, seed: int, error: float = 0.01) -> LatencyDistribution:
    rng = random.Random(seed)
    truth = sorted(rng.lognormvariate(math.log(median), 0.35) for _ in range(n))
    answered: dict[float, float | None] = {q: true_quantile(truth, q) * (1 + error) for q in QUANTILES}
    return LatencyDistribution(metric, "native", truth, answered)


def _report(n: int = 300, detail: str = "relative error +1.00%; native histograms, target 2%") -> Report:
    medians = (0.12, 0.0125, 0.5, 0.012)
    distributions = [
        _distribution(metric, n * (30 if spec is semconv.ITL_SPEC else 1), median, seed)
        for seed, (metric, spec, median) in enumerate(zip(METRICS, SPECS, medians, strict=True))
    ]
    checks = [Check("requests that succeeded", n, n, 0, "exact", True)]
    for dist in distributions:
        for q in QUANTILES:
            truth = true_quantile(dist.truth, q)
            answered = dist.answered[q]
            assert answered is not None
            name = f"{dist.metric} p{q * 100:g}"
            checks.append(Check(f"{name} vs the truth", truth, answered, answered / truth - 1, 0.02, True, detail))
            checks.append(Check(f"{name} as the buckets allow", "[0.1, 0.2]", answered, None, "exact", True))
    settings = {"requests": n, "concurrency": 20, "seed": 0, "histogram": "exponential", "via_sidecar": False,
                "buckets": "geometric"}  # fmt: skip
    return Report(profile="local", settings=settings, checks=checks, distributions=distributions)


def test_page_shows_verdict_settings_headings_every_check_and_the_markers() -> None:
    report = _report()
    page = render_html(report)
    parsed = _Page(page)
    assert "PASSED" in parsed.text and "FAILED" not in parsed.text
    for setting in ("requests", "concurrency", "histograms", "buckets", "native (exponential)"):
        assert setting in parsed.text
    assert [h for h in parsed.h2 if h != "Checks"] == [METRIC_TITLES[m] for m in METRICS]
    for check in report.checks:
        assert check.name in parsed.text, check.name
    assert parsed.text.count("PASS") >= len(report.checks)
    for dist in report.distributions:
        assert dist.metric in parsed.text
        for q in QUANTILES:
            # A marker (with its tooltip) at the truth and at the answer of every quantile, and its row in the table.
            assert f"p{q * 100:g} true: " in parsed.text and f"p{q * 100:g} answered: " in parsed.text
    markers = len(METRICS) * len(QUANTILES) + len(METRICS)  # one of each per quantile, plus the legend's
    assert page.count('<circle class="truth"') == markers
    assert page.count('<path class="answer"') == markers
    assert page.count('<polyline class="curve"') == len(METRICS)


def test_page_is_self_contained() -> None:
    page = render_html(_report()).lower()
    for forbidden in ("http://", "https://", "<script", "<link", "src=", "url(", "@import", "@font-face"):
        assert forbidden not in page, forbidden
    assert page.startswith("<!doctype html>") and '<meta charset="utf-8">' in page


def test_everything_from_the_run_is_escaped() -> None:
    report = _report(detail="<b>bold</b> & more")
    report.checks.append(Check("a <script>alert(1)</script> check", "<i>", "x\"y'", None, "exact", False, "<b>"))
    report.notes.append("failed <request 7>")
    report.settings["ttft"] = "<lognormal>"
    page = render_html(report)
    assert "<b>" not in page and "<i>" not in page and "<script" not in page and "<request" not in page
    assert "&lt;b&gt;bold&lt;/b&gt; &amp; more" in page
    assert "a &lt;script&gt;alert(1)&lt;/script&gt; check" in page
    assert "&lt;lognormal&gt;" in page and "failed &lt;request 7&gt;" in page
    parsed = _Page(page)
    assert "FAILED" in parsed.text and "Failed checks" in parsed.text


def test_page_size_does_not_grow_with_the_values() -> None:
    small = render_html(_report(n=100))
    large = render_html(_report(n=10_000))  # 300,000 inter-token gaps
    assert len(large.encode()) < 100_000, len(large.encode())
    # The checks table is the same size; the charts only thin differently.
    assert abs(len(large) - len(small)) < 15_000
    for points in re.findall(r'<polyline class="curve" points="([^"]*)"', large):
        assert len(points.split()) <= MAX_CDF_POINTS + 2


@pytest.mark.parametrize("n", [1, 2, 50, 10_000])
def test_cdf_points_are_bounded_monotone_and_end_at_one(n: int) -> None:
    values = sorted(random.Random(n).lognormvariate(math.log(0.012), 0.5) for _ in range(n))
    frame = Frame(values[0] / 1.2, values[-1] * 1.2)
    points = cdf_points(values, frame)
    assert 2 <= len(points) <= MAX_CDF_POINTS + 2
    assert all(a[0] <= b[0] + 1e-9 and a[1] >= b[1] - 1e-9 for a, b in itertools.pairwise(points))  # right and up
    assert points[-1] == (frame.x(values[-1]), Frame.y(1.0))


@pytest.mark.parametrize(
    ("lo", "hi"),
    [(0.0095, 0.0155), (0.045, 0.36), (0.003, 0.04), (1e-5, 0.04), (0.2, 40.0), (0.99, 1.01)],
)
def test_log_ticks_are_readable_at_any_range(lo: float, hi: float) -> None:
    frame = Frame(lo, hi)
    ticks = log_ticks(frame)
    assert len(ticks) >= 2, ticks
    assert all(lo <= t <= hi for t in ticks)
    labels = [html_report._tick_label(t) for t in ticks]
    assert len(set(labels)) == len(labels), labels
    xs = [frame.x(t) for t in ticks]
    assert all(b - a >= 20 for a, b in itertools.pairwise(xs)), labels


def test_missing_answers_and_empty_or_flat_distributions_still_render() -> None:
    report = _report(n=40)  # 1,200 inter-token gaps: enough for a 0.1% quantile above the minimum
    ttft, tpot, duration, itl = report.distributions
    report.distributions = [
        LatencyDistribution(ttft.metric, "classic", ttft.truth, {0.5: None, 0.9: math.nan, 0.95: math.inf, 0.99: 0.2}),
        LatencyDistribution(tpot.metric, "classic", [0.01] * 5, {q: 0.01 for q in QUANTILES}),
        LatencyDistribution(duration.metric, "classic", [0.5], {q: 0.5 for q in QUANTILES}),
        LatencyDistribution(itl.metric, "classic", [1e-5, *itl.truth], {q: 0.012 for q in QUANTILES}),
    ]
    text = _Page(render_html(report)).text
    assert text.count("no data") == 3 and text.count("no answer") == 3
    assert "1 value below" in text  # the far low tail of ITL is clipped, and said so


def test_a_run_without_true_values_still_renders() -> None:
    report = _report(n=5)
    report.distributions = [LatencyDistribution(METRICS[0], "native", [], dict.fromkeys(QUANTILES))]
    page = render_html(report)
    text = _Page(page).text
    assert "no values" in text and text.count("no data") == len(QUANTILES)
    assert '<polyline class="curve"' not in page


def test_a_failing_run_still_writes_the_page(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    report = _report()
    report.checks[0] = Check("requests that succeeded", 300, 299, -1, "exact", False, "count differs")
    monkeypatch.setattr(verify_command, "find_collector", lambda: tmp_path / "otelcol")
    monkeypatch.setattr(verify_command, "run_verify", lambda *args: report)
    page = tmp_path / "out" / "verify.html"
    result = CliRunner().invoke(cli, ["verify", "--profile", "local", "--html", str(page)])
    assert result.exit_code == 1, result.output
    parsed = _Page(page.read_text(encoding="utf-8"))
    assert "FAILED" in parsed.text and "count differs" in parsed.text
    assert [p.name for p in page.parent.iterdir()] == ["verify.html"], "written atomically, no temp file left"


def test_a_page_that_cannot_be_written_is_a_clear_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(verify_command, "find_collector", lambda: tmp_path / "otelcol")
    monkeypatch.setattr(verify_command, "run_verify", lambda *args: _report())

    def refuse(path: Path, text: str) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(verify_command, "write_atomically", refuse)
    result = CliRunner().invoke(cli, ["verify", "--profile", "local", "--html", str(tmp_path / "p.html")])
    assert result.exit_code == 1
    assert "cannot write the HTML report to" in result.output and "Permission denied" in result.output


def test_bad_html_paths_are_refused_before_the_run(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("", encoding="utf-8")
    runner = CliRunner()
    result = runner.invoke(cli, ["verify", "--profile", "local", "--html", str(a_file / "page.html")])
    assert result.exit_code == 2
    assert "Invalid value for '--html'" in result.output and "is not a directory" in result.output
    result = runner.invoke(cli, ["verify", "--profile", "local", "--html", str(tmp_path)])
    assert result.exit_code == 2 and "is a directory" in result.output


# --- end to end: a real run's page in headless Chromium -------------------------------------------------------------
