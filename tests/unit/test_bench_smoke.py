"""The hot-path benchmark runs end to end on a tiny workload: correctness checks pass, the markdown is written.

No timing is asserted: figures from a 160-token run on a shared CI machine mean nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from bench import hot_path

TINY = ["--requests", "20", "--tokens", "8", "--repeat", "1"]


def test_tiny_run_passes_every_correctness_check() -> None:
    result = hot_path.run(requests=20, tokens=8, repeat=1)
    assert result.checks, "no correctness checks ran"
    assert all(c.ok for c in result.checks), [c for c in result.checks if not c.ok]
    assert result.passed
    # Every approach was measured once per repeat.
    assert {a: len(ns) for a, ns in result.elapsed_ns.items()} == dict.fromkeys(hot_path.ORDER, 1)


def test_main_writes_the_table_between_the_markers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = tmp_path / "docs" / "benchmarks.md"
    assert hot_path.main([*TINY, "--markdown", str(doc)]) == 0

    text = doc.read_text()
    assert text.startswith("# Benchmarks\n")
    assert "## Hot path: CPU per streamed token" in text
    figures = text.split(hot_path.BEGIN, 1)[1].split(hot_path.END, 1)[0]
    assert "| " + " | ".join(hot_path.HEADERS) + " |" in figures
    for approach in (hot_path.NAIVE, hot_path.PROMETHEUS, hot_path.TOKENLAT):
        assert f"| {approach} | " in figures
    assert "**FAILED**" not in figures
    assert "20 requests x 8 tokens" in figures
    # Whether each target was met is computed and written, either way.
    assert figures.count("tokenlat >= 10x cheaper than naive OTel") == 1
    assert figures.count("tokenlat not dearer than prometheus_client") == 1

    out = capsys.readouterr()
    assert "x cheaper than naive OTel" in out.out
    assert "repeat 1/1" in out.err  # progress goes to stderr


def test_rewrite_keeps_the_rest_of_the_document(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text(f"# Mine\n\nintro\n\n{hot_path.BEGIN}\nold figures\n{hot_path.END}\n\n## Another section\n")
    hot_path.write_markdown(doc, "new figures")
    assert doc.read_text() == (
        f"# Mine\n\nintro\n\n{hot_path.BEGIN}\nnew figures\n{hot_path.END}\n\n## Another section\n"
    )

    # A document without the markers gets the section appended, not overwritten.
    other = tmp_path / "other.md"
    other.write_text("# Benchmarks\n\n## Something else\n")
    hot_path.write_markdown(other, "figures")
    text = other.read_text()
    assert text.startswith("# Benchmarks\n\n## Something else\n")
    assert text.count("# Benchmarks") == 1
    assert f"{hot_path.BEGIN}\nfigures\n{hot_path.END}" in text


def test_a_lost_gap_fails_loudly_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    measure = hot_path.MEASURE[hot_path.TOKENLAT]

    def losing_one_gap(w: hot_path.Workload) -> tuple[int, hot_path.Observed]:
        ns, observed = measure(w)
        key, dist = next(iter(observed.histograms.items()))
        buckets = list(dist.buckets)
        buckets[buckets.index(max(buckets))] -= 1
        observed.histograms[key] = dataclasses.replace(dist, count=dist.count - 1, buckets=tuple(buckets))
        return ns, observed

    monkeypatch.setitem(hot_path.MEASURE, hot_path.TOKENLAT, losing_one_gap)
    doc = tmp_path / "benchmarks.md"
    assert hot_path.main([*TINY, "--markdown", str(doc)]) == 1
    assert not doc.exists()
    assert "FAILED" in capsys.readouterr().out
