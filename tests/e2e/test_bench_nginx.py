"""The sidecar benchmark with its reference, nginx, in the same run: the nginx rows exist and hold sane figures.

Nothing timed is asserted (a tiny run on a shared machine decides no target): counts must match, figures must be
positive and finite, and whether each target against nginx was met must be computed and written. nginx missing is a
failure, never a skip: `make bench` needs it (make nginx), and CI installs it (.ci/run).
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import pytest

from bench import nginx
from bench import sidecar as bench
from tests.e2e.bench_runs import keep_results

TINY = ["--requests", "20", "--concurrency", "10", "--rounds", "1", "--reference", "nginx"]


def test_tiny_bench_with_the_nginx_reference(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if nginx.find_nginx() is None:
        pytest.fail(f"end-to-end prerequisite missing: {nginx.MISSING}")
    results = keep_results(bench, monkeypatch)
    doc = tmp_path / "benchmarks.md"
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = bench.main([*TINY, "--markdown", str(doc)])
    assert code == 0, out.getvalue()
    (result,) = results
    assert all(c.ok for c in result.checks), [c for c in result.checks if not c.ok]

    # nginx relayed every stream, byte for byte, and its whole process's CPU time was read.
    through = result.runs[bench.NGINX]
    assert set(through.responses) == set(range(10, 30)) == set(result.runs[bench.DIRECT].responses)
    assert through.received_events == result.runs[bench.DIRECT].received_events == result.chunks()
    assert result.nginx is not None and result.nginx.cpu_seconds > 0
    for name in (bench.NGINX, bench.SIDECAR, bench.RELAY_ONLY):
        assert 0 < result.cpu_per_chunk(name) < 1, name  # seconds per chunk: positive, and not absurd
        assert all(math.isfinite(result.shift(name, q)) for q in (0.5, 0.99)), name

    # The comparison table and both targets against nginx, met or missed, in the text and in the markdown.
    rows = bench.reference_rows(result)
    assert [row[0] for row in rows] == [bench.DIRECT, bench.NGINX, bench.SIDECAR, bench.RELAY_ONLY]
    assert rows[1][2] == "1.00"  # nginx against itself
    names = [name for name, _, _ in result.reference_targets()]
    assert names == ["sidecar CPU per chunk <= 2x nginx's", "sidecar added p99 latency <= nginx's + 0.5 ms"]
    figures = doc.read_text().split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    assert "| " + " | ".join(bench.REFERENCE_HEADERS) + " |" in figures
    assert "| nginx, the reference (relaying only) |" in figures
    for name in names:
        assert name in out.getvalue() and name in figures
    assert "python -m bench.sidecar --requests 20 --concurrency 10 --seed 7 --rounds 1" in figures
    assert "--reference" not in figures  # nginx is the default
