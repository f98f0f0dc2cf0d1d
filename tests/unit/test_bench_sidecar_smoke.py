"""The sidecar benchmark runs end to end on a tiny workload: its correctness checks pass, the markdown is written.

One real run (20 streams, 10 at a time: five runs of two or three processes, ~12 s) serves every test here. No timing is
asserted: latency figures from 700 chunks on a shared CI machine mean nothing; whether the targets were met is
only checked to be computed and written.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench import sidecar as bench
from bench.hot_path import Check

# No reference proxy: nginx is not a unit-test dependency (tests/e2e/test_bench_nginx.py runs the bench with it).
TINY = ["--requests", "20", "--concurrency", "10", "--rounds", "2", "--reference", "none"]


@dataclasses.dataclass
class TinyRun:
    code: int
    result: bench.Result  # the first round's
    rounds: list[bench.Result]
    doc: Path
    out: str
    err: str


class CapturedStd:
    """stdout and stderr of the block (capsys is function-scoped; the run is shared by the module)."""

    def __enter__(self) -> CapturedStd:
        self._out, self._err = io.StringIO(), io.StringIO()
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(contextlib.redirect_stdout(self._out))
        self._stack.enter_context(contextlib.redirect_stderr(self._err))
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()
        self.out, self.err = self._out.getvalue(), self._err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TinyRun]:
    doc = tmp_path_factory.mktemp("docs") / "benchmarks.md"
    doc.write_text("# Benchmarks\n\n## Hot path\n\nkept as it is\n")
    results: list[bench.Result] = []
    real_run = bench.run

    def keeping(*args: object, **kwargs: object) -> bench.Result:
        results.append(real_run(*args, **kwargs))  # type: ignore[arg-type]
        return results[-1]

    with pytest.MonkeyPatch.context() as mp, CapturedStd() as std:
        mp.setattr(bench, "run", keeping)
        code = bench.main([*TINY, "--markdown", str(doc)])
    assert len(results) == 2  # --rounds 2
    yield TinyRun(code, results[0], results, doc, std.out, std.err)


def test_tiny_run_passes_every_correctness_check(tiny: TinyRun) -> None:
    result = tiny.result
    assert tiny.code == 0, tiny.out
    assert result.checks, "no correctness checks ran"
    assert all(c.ok for c in result.checks), [c for c in result.checks if not c.ok]
    # Every run served the same 20 request indexes (after the 10 warm-up streams), and the sidecar measured them.
    assert set(result.runs) == set(bench.RUNS) - {bench.NGINX}
    assert result.nginx is None and not result.reference_targets()
    assert all(set(run.responses) == set(range(10, 30)) for run in result.runs.values())
    assert set(result.sidecars) == set(bench.SIDECAR_RUNS)
    assert result.sidecar is not None and result.sidecar.ttft["count"] == 20
    assert result.sidecar.cpu_seconds > 0
    # Every chunk of every stream was paired with the same chunk direct.
    assert len(result.added()) == result.chunks() == result.runs[bench.DIRECT].received_events
    assert all(not math.isnan(s) and not math.isnan(c) for _, _, s, c in result.accuracy())


def test_main_writes_the_figures_between_the_markers(tiny: TinyRun) -> None:
    text = tiny.doc.read_text()
    assert text.startswith("# Benchmarks\n\n## Hot path\n\nkept as it is\n")  # the rest of the document stays
    assert bench.SECTION_HEADING in text
    figures = text.split(bench.BEGIN, 1)[1].split(bench.END, 1)[0]
    for headers in (
        bench.ROUNDS_HEADERS,
        bench.SHIFT_HEADERS,
        bench.PAIRED_HEADERS,
        bench.CPU_HEADERS,
        bench.CLIENT_HEADERS,
        bench.ACCURACY_HEADERS,
    ):
        assert "| " + " | ".join(headers) + " |" in figures
    assert "| through the sidecar - direct | " in figures  # paired
    assert "| through a byte pipe (no HTTP) | " in figures  # the floor of a proxy hop
    assert "| sidecar (measuring) | " in figures
    assert "python -m bench.sidecar --requests 20 --concurrency 10 --seed 7 --rounds 2 --reference none" in figures
    assert "against nginx" not in figures and "| nginx added p99 ms |" in figures  # "-" in every round
    assert figures.count(" (median) |") == 1  # one of the two rounds, named
    assert "**FAILED**" not in figures
    # Whether each target was met is computed and written, either way.
    assert figures.count("p99 added latency per chunk <= 1 ms") == 1
    assert figures.count("within 2% of the client's") == 1

    assert "x cheaper" not in tiny.out and "through the sidecar - direct" in tiny.out
    assert "through the sidecar: 20/20 streams" in tiny.err  # progress goes to stderr
    assert "sidecar: round 2 of 2" in tiny.err


def test_a_failed_check_fails_loudly_and_writes_nothing(
    tiny: TinyRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = dataclasses.replace(tiny.result, checks=[*tiny.result.checks, Check("a lost chunk", False, "1 missing")])
    monkeypatch.setattr(bench, "run", lambda *args, **kwargs: broken)
    doc = tmp_path / "benchmarks.md"
    assert bench.main([*TINY, "--markdown", str(doc)]) == 1
    assert not doc.exists()
    assert "[FAILED] a lost chunk" in capsys.readouterr().out


def test_rounds_judge_latency_on_the_median_round_and_checks_on_every_round(tiny: TinyRun) -> None:
    first, second = tiny.rounds
    # Round 2 made to add 10 ms more at p99 than round 1: round 1 is the median (the lower of two) and decides.
    slow = dataclasses.replace(second)
    slow.shift = lambda run, q, reference=bench.DIRECT: (  # type: ignore[method-assign]
        first.shift(run, q, reference) + (0.010 if (run, q) == (bench.SIDECAR, 0.99) else 0.0)
    )
    rounds = bench.Rounds([slow, first])
    assert rounds.median is first
    latency, _ = rounds.targets()
    assert latency[1] == first.latency_target()[1]
    assert "median of 2 rounds" in latency[2]
    # A check failed in one round fails the merged line, with that round's detail.
    broken = dataclasses.replace(second, checks=[*second.checks[:-1], Check(second.checks[-1].name, False, "lost")])
    merged = {c.name: c for c in bench.Rounds([first, broken]).checks}
    assert not merged[second.checks[-1].name].ok and merged[second.checks[-1].name].detail == "lost"
    assert not bench.Rounds([first, broken]).passed and bench.Rounds([first, second]).passed
    # Accuracy: every round's rows count, so one round off by 5% misses the target. The other round is made exact:
    # the tiny run's own errors (a busy machine moves them by several percent) must not decide this.
    exact, off = dataclasses.replace(first), dataclasses.replace(second)
    exact_rows = [(m, q, c, c) for m, q, _, c in first.accuracy()]
    off_rows = [(m, q, c * 1.05, c) for m, q, _, c in second.accuracy()]
    exact.accuracy = lambda: exact_rows  # type: ignore[method-assign]
    off.accuracy = lambda: off_rows  # type: ignore[method-assign]
    assert bench.Rounds([exact, exact]).targets()[1][1]
    assert not bench.Rounds([exact, off]).targets()[1][1]
    assert "+5.00%" in bench.Rounds([exact, off]).targets()[1][2]


def test_rounds_rotate_the_order_of_the_proxied_runs(tiny: TinyRun) -> None:
    first, second = tiny.rounds
    assert first.order == (bench.SIDECAR, bench.RELAY_ONLY, bench.BYTE_PIPE)  # no nginx: --reference none
    assert second.order == (bench.RELAY_ONLY, bench.BYTE_PIPE, bench.SIDECAR)
    for result in tiny.rounds:  # reported in one order, whichever they ran in
        assert list(result.runs) == [bench.DIRECT, bench.SIDECAR, bench.RELAY_ONLY, bench.BYTE_PIPE, bench.DIRECT_AGAIN]
    rows = bench.rounds_rows(bench.Rounds(tiny.rounds))
    assert [row[1] for row in rows] == ["sidecar, not measuring, pipe", "not measuring, pipe, sidecar"]


def test_targets_against_nginx_are_judged_on_the_median_of_the_rounds_comparisons(tiny: TinyRun) -> None:
    """One round whose nginx run met a stall (its p99 far up) must not decide: the median of the rounds does."""

    def round_of(cpu_ratio: float, p99_over_nginx_ms: float) -> bench.Result:
        result = dataclasses.replace(tiny.result)
        result.against_nginx = lambda: (cpu_ratio, p99_over_nginx_ms / 1000)  # type: ignore[method-assign]
        return result

    missed = bench.reference_targets([round_of(1.9, 0.7), round_of(2.5, -6.0), round_of(1.8, 0.9)])
    assert [(name, ok) for name, ok, _ in missed] == [
        ("sidecar CPU per chunk <= 2x nginx's", True),  # median 1.9x
        ("sidecar added p99 latency <= nginx's + 0.5 ms", False),  # median +0.7 ms
    ]
    assert "median of 3 round(s): the sidecar's added p99 +0.700 ms over nginx's" in missed[1][2]
    met = bench.reference_targets([round_of(2.1, 0.4), round_of(2.2, 3.0), round_of(1.9, 0.2), round_of(1.8, 0.5)])
    assert [ok for _, ok, _ in met] == [True, True]  # medians of four: (1.9 + 2.1) / 2 x, (0.4 + 0.5) / 2 ms
    over = bench.reference_targets([round_of(2.1, 0.4), round_of(2.3, 0.4)])
    assert [ok for _, ok, _ in over] == [False, True]
    assert bench.reference_targets([tiny.result]) == []  # without nginx: nothing to judge


def test_sidecar_quantile_is_what_prometheus_3_answers_for_its_histogram() -> None:
    # Scale 0: bucket i holds (2**i, 2**(i+1)]. Two zeros, then 1 value in (1, 2], 3 in (2, 4], 4 in (8, 16].
    h = {"scale": 0, "zero_count": 2, "count": 10, "sum": 0.0, "offset": 0, "bucket_counts": [1, 3, 0, 4]}
    assert bench.sidecar_quantile(h, 0.1) == 0.0  # rank 1: a zero
    assert bench.sidecar_quantile(h, 0.3) == pytest.approx(2.0)  # rank 3 ends (1, 2]
    # q >= 0.5 counted from the top, interpolated in log2: rank 5 from the top is 2 of 3 down into (2, 4].
    assert bench.sidecar_quantile(h, 0.5) == pytest.approx(2 ** (5 / 3))
    assert bench.sidecar_quantile(h, 0.99) == pytest.approx(2**3.975)  # 0.1 of 4 below the top of (8, 16]
    assert math.isnan(bench.sidecar_quantile({**h, "count": 0, "zero_count": 0, "bucket_counts": []}, 0.5))


def test_histogram_delta_leaves_only_what_came_after() -> None:
    before = {"scale": 8, "zero_count": 1, "count": 4, "sum": 1.0, "offset": 10, "bucket_counts": [2, 1]}
    after = {"scale": 8, "zero_count": 1, "count": 9, "sum": 3.5, "offset": 9, "bucket_counts": [1, 2, 1, 0, 4]}
    delta = bench._histogram_delta(after, before)
    assert delta == {"scale": 8, "zero_count": 0, "count": 5, "sum": 2.5, "offset": 9, "bucket_counts": [1, 0, 0, 0, 4]}
