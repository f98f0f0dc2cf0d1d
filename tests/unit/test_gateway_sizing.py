"""The gateway bench's arithmetic, without running anything: how telemetrygen is driven (bench/telemetrygen.py) and
what a measured cost per point means in tokens (bench/gateway_sizing.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.gateway_sizing import POINTS_PER_SET, CostModel, Shape, example_shapes, series_per_set
from bench.telemetrygen import SERIES_ATTRIBUTE, Load
from tokenlat_cli.profiles import load_profile


def test_a_load_sends_every_series_once_per_interval_from_short_runs() -> None:
    load = Load(rate=4000, interval_s=15, metric="m")
    assert (load.slots, load.points_per_slot, load.series) == (15, 4000, 60_000)
    assert load.prometheus_series == 60_000 * 18 and load.one_series_each == "m_count"
    assert load.workers == 4  # no worker sends more than a thousand points a run: telemetrygen's cost grows with it
    argv = load.argv(Path("/bin/telemetrygen"), "http://127.0.0.1:4317", slot=7)
    assert argv[argv.index("--otlp-endpoint") + 1] == "127.0.0.1:4317"
    assert argv[argv.index("--otlp-attributes") + 1] == 'service.instance.id="slot-7"'
    assert argv[argv.index("--duration") + 1] == "1s" and "--unique-timeseries" in argv
    assert float(argv[argv.index("--rate") + 1]) * load.workers == 4000
    gauge = Load(rate=100, interval_s=1, metric="g", metric_type="Gauge")
    assert (gauge.series, gauge.prometheus_series, gauge.one_series_each, gauge.workers) == (100, 100, "g", 1)
    assert SERIES_ATTRIBUTE == "timebox"


def test_the_cost_model_splits_a_point_into_its_fixed_part_and_its_series() -> None:
    model = CostModel.fit((18, 100e-6), (1, 15e-6))  # either order
    assert model.per_series == pytest.approx(5e-6) and model.per_point == pytest.approx(10e-6)
    assert model.cpu_per_point(104) == pytest.approx(530e-6)
    # A histogram point measured cheaper than a gauge (noise) gives no slope, never a negative one.
    flat = CostModel.fit((1, 20e-6), (18, 19e-6))
    assert flat.per_series == 0 and flat.per_point == pytest.approx(20e-6)


def test_tokens_per_core_follow_from_points_not_tokens() -> None:
    classic = Shape("classic", "classic", 20, series_per_set(load_profile("selfhosted")), 15, 2000)
    assert POINTS_PER_SET == 6
    # selfhosted's layout: 157 + 114 + 170 + 2 x 17 + 147 series per attribute set; native: one per point.
    assert classic.series_per_set == 622 and series_per_set(load_profile("local")) == 6
    assert classic.points_per_replica == pytest.approx(8.0) and classic.series_per_replica == 12_440
    cost = 500e-6  # CPU seconds per point
    assert classic.gateway_cores_per_replica(cost) == pytest.approx(8.0 * cost)
    assert classic.tokens_per_core(cost) == pytest.approx(2000 / (8.0 * cost))
    # Twice the tokens per replica, same telemetry: twice the tokens per gateway core. Four times the interval:
    # a quarter of the points.
    busier = Shape("classic", "classic", 20, 622, 15, 4000)
    assert busier.tokens_per_core(cost) == pytest.approx(2 * classic.tokens_per_core(cost))
    slower = Shape("classic", "classic", 20, 622, 60, 2000)
    assert slower.tokens_per_core(cost) == pytest.approx(4 * classic.tokens_per_core(cost))
    assert "tokens/s per gateway core" in classic.arithmetic(cost)
    shapes = example_shapes()
    assert [s.name for s in shapes] == ["classic, 15 s", "classic, 60 s", "native, 15 s", "native, 60 s"]
    assert [s.histograms for s in shapes] == ["classic", "classic", "native", "native"]
