"""The gateway bench's own checks (bench/gateway.py), on steps made up here: what they call a broken path.

The end-to-end runs (tests/e2e/test_bench_gateway.py) see them pass; this shows each one failing.
"""

from __future__ import annotations

from bench import gateway
from bench.gateway_load import Step
from bench.gateway_meter import ACCEPTED, COUNTERS, LIMITER_REFUSED, SENT, Window
from bench.hot_path import Check


def step(accepted: float, refused: float = 0.0) -> Step:
    per_second = dict.fromkeys(COUNTERS, 0.0) | {ACCEPTED: accepted, LIMITER_REFUSED: refused, SENT: accepted}
    window = Window(5.0, per_second, gateway_cores=0.3, sink_cores=0.1, generator_cores=0.2, machine_cores=0.7)
    return Step(
        sweep=gateway.RATE,
        metric_type="Histogram",
        offered_rate=accepted + refused,
        interval_s=3.0,
        series=10,
        series_per_point=1.0,
        prometheus_series=100,
        window=window,
        gateway_rss_mib_mean=100.0,
        gateway_rss_mib_max=110.0,
        sink_rss_mib_mean=50.0,
        sink_rss_mib_max=55.0,
        queue_max=1.0,
        gateway_cores_max=0.4,
        series_at_sink=None,
        countable=False,
        generator_runs=1,
    )


def accepted_check(steps: list[Step]) -> Check:
    (check,) = [c for c in gateway._checks(steps) if c.name.startswith("the gateway accepted points")]
    return check


def test_a_step_that_accepted_nothing_fails_unless_the_memory_limiter_refused_its_points() -> None:
    assert accepted_check([step(2000.0), step(5000.0, refused=1000.0)]).ok
    # Refused from the window's first second: nothing accepted, and the points did reach the gateway.
    assert accepted_check([step(2000.0), step(0.0, refused=6000.0)]).ok
    broken = accepted_check([step(2000.0), step(0.0)])
    assert not broken.ok and "6000" not in broken.detail and "0/s" in broken.detail
