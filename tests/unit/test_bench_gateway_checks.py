"""The gateway bench's own checks (bench/gateway.py), on steps made up here: what they call a broken path.

The end-to-end runs (tests/e2e/test_bench_gateway.py) see them pass; this shows each one failing.
"""

from __future__ import annotations

from bench import gateway
from bench.gateway_load import Step
from bench.gateway_meter import ACCEPTED, COUNTERS, LIMITER_REFUSED, SENT, Window
from bench.hot_path import Check


def step(accepted: float, refused: float = 0.0, series: int = 10, at_sink: float | None = None) -> Step:
    per_second = dict.fromkeys(COUNTERS, 0.0) | {ACCEPTED: accepted, LIMITER_REFUSED: refused, SENT: accepted}
    window = Window(5.0, per_second, gateway_cores=0.3, sink_cores=0.1, generator_cores=0.2, machine_cores=0.7)
    return Step(
        sweep=gateway.RATE,
        metric_type="Histogram",
        offered_rate=accepted + refused,
        interval_s=3.0,
        series=series,
        series_per_point=1.0,
        prometheus_series=100,
        window=window,
        gateway_rss_mib_mean=100.0,
        gateway_rss_mib_max=110.0,
        sink_rss_mib_mean=50.0,
        sink_rss_mib_max=55.0,
        queue_max=1.0,
        gateway_cores_max=0.4,
        series_at_sink=at_sink,
        countable=at_sink is not None,
        generator_runs=1,
    )


def named_check(steps: list[Step], start: str) -> Check:
    (check,) = [c for c in gateway._checks(steps) if c.name.startswith(start)]
    return check


def accepted_check(steps: list[Step]) -> Check:
    return named_check(steps, "the gateway accepted points")


def test_a_step_that_accepted_nothing_fails_unless_the_memory_limiter_refused_its_points() -> None:
    assert accepted_check([step(2000.0), step(5000.0, refused=1000.0)]).ok
    # Refused from the window's first second: nothing accepted, and the points did reach the gateway.
    assert accepted_check([step(2000.0), step(0.0, refused=6000.0)]).ok
    broken = accepted_check([step(2000.0), step(0.0)])
    assert not broken.ok and "6000" not in broken.detail and "0/s" in broken.detail


def test_the_sink_holds_at_least_the_accepted_points_series_and_no_more_than_planned() -> None:
    def sink_check(at_sink: float) -> Check:
        # 1,620 points/s accepted of 2,000 offered, a 3 s interval: 4,860 series sent by the points, 6,000 planned.
        return named_check([step(1620.0, series=6000, at_sink=at_sink)], "the sink received the series sent")

    assert sink_check(4860.0).ok
    # A generator short of its rate stops its slot runs at different points: the window holds more distinct
    # series than the accepted points fill in one interval, up to the plan (seen in CI: 5,604).
    assert sink_check(5604.0).ok and sink_check(6000.0).ok
    lost = sink_check(4000.0)
    assert not lost.ok and "4000.0 at the sink, 4,860 sent, 6,000 planned" in lost.detail
    assert not sink_check(6700.0).ok  # series the load never planned
