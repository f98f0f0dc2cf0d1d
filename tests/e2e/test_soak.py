"""The soak in CI: the sidecar and a process using the library under steady load for 3 minutes, their RSS and
open descriptors flat after warm-up (bench/soak.py; `make soak` runs it for 30 minutes).

Short as it is, it catches the leaks that matter: a bug that keeps every request's attributes grew the processes by
50 to 90 MiB an hour at this load (`python -m bench.soak --duration 180 --inject-leak`), over the 40 MiB an hour
allowed, where the same run without it stays under 30 (the tail of the warm-up; see docs/benchmarks.md), and a
descriptor leaked per request or per connection grows the count by hundreds. Nothing here is timed: the request
rates depend on the machine, and only what the processes hold is judged.
"""

from __future__ import annotations

from pathlib import Path

from bench import soak

DURATION_S = 180.0


def test_sidecar_and_library_stay_flat_under_steady_load(collector_binary: Path) -> None:
    result = soak.run(duration=DURATION_S)
    report = soak.report(result)
    print(report)  # the figures, with pytest -rP, when it passes too
    assert result.passed, report
    for flatness in result.flatness:
        assert flatness.rss_slope_mib_per_hour < soak.RSS_SLOPE_LIMIT_MIB_PER_HOUR, report
        assert flatness.fds_trend <= soak.FD_TREND_LIMIT, report
