"""telemetrygen (contrib's load generator) driven to send a stated number of histogram series at a stated rate.

A deployment of tokenlat sends each of its series once per export interval: N series exported every D seconds are
N / D data points a second, each of a different series. This module makes telemetrygen do the same.

telemetrygen varies series with ``--unique-timeseries``: a ``timebox`` data-point attribute whose value counts up,
shared by the run's workers. At the release pinned here its worker appends that attribute to the attribute list it
keeps for the whole run, once per data point, and builds each point's attribute set from the whole list
(pkg/metrics/worker.go: ``signalAttrs = append(signalAttrs, tb.getAttribute())``): a point costs time in proportion
to the points the worker has sent before it. Measured here: one unthrottled worker fell from 3,900 points a second
in its first 5 s to 640 in its eighth, burning a core. So no run is long: a run lasts one slot (``slot_s``, 1 s), so
that no worker's list outgrows the points it sends in a second, and runs follow each other, each with its own
``service.instance.id`` (a Prometheus ``instance`` label) from a cycle of ``interval_s / slot_s`` slots. Slot k's
run sends ``timebox`` 1 to rate x slot_s under instance k, and so does its next run, one interval later: every
series gets one point per interval, and the series number rate x interval, as in a deployment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from tokenlat_cli.binaries import cached_build_path, find_binary
from tokenlat_cli.manifest import read_release
from tokenlat_cli.verify.processes import ServiceError

TELEMETRYGEN_ENV = "TELEMETRYGEN_BIN"
MODULE = "github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen"
#: The data-point attribute ``--unique-timeseries`` sets (telemetrygen's pkg/metrics/time_box.go).
SERIES_ATTRIBUTE = "timebox"
#: What a worker sends per second at most: its attribute list grows by this many entries in a slot (see above).
POINTS_PER_WORKER = 1000
#: Points a worker puts in one export (telemetrygen's default, and the Collector testbed's ItemsPerBatch).
BATCH_SIZE = 100
#: Prometheus series per OTLP series, by telemetrygen's --metric-type: its histogram has 15 explicit bounds
#: (pkg/metrics/worker.go), so 16 buckets, _sum and _count; a gauge is one series.
PROMETHEUS_SERIES_PER_POINT = {"Histogram": 15 + 1 + 2, "Gauge": 1}


def find_telemetrygen() -> Path:
    """$TELEMETRYGEN_BIN, else the one `make telemetrygen` installed for the release of collector/VERSION.

    Not PATH: a telemetrygen of another release would send another shape of data under the same name."""
    release = str(read_release())
    how = "run `make telemetrygen` (scripts/install-telemetrygen.sh)"
    candidates = [cached_build_path("telemetrygen", release)]
    return find_binary("telemetrygen", TELEMETRYGEN_ENV, how, ServiceError, candidates, search_path=False)


@dataclass(frozen=True)
class Load:
    """``rate`` histogram points a second to ``endpoint`` (OTLP/gRPC), ``rate x interval_s`` series."""

    rate: float
    interval_s: float
    metric: str
    metric_type: str = "Histogram"
    slot_s: float = 1.0

    @property
    def slots(self) -> int:
        return max(1, round(self.interval_s / self.slot_s))

    @property
    def points_per_slot(self) -> int:
        return max(1, round(self.rate * self.slot_s))

    @property
    def series(self) -> int:
        """OTLP series (metric, instance, timebox); PROMETHEUS_SERIES_PER_POINT times as many Prometheus series."""
        return self.slots * self.points_per_slot

    @property
    def prometheus_series(self) -> int:
        return self.series * PROMETHEUS_SERIES_PER_POINT[self.metric_type]

    @property
    def series_per_point(self) -> float:
        return PROMETHEUS_SERIES_PER_POINT[self.metric_type]

    @property
    def measure_floor_s(self) -> float:
        """A measured window at least this long sees every series send (an interval, and a run's start and end)."""
        return self.interval_s + 2 * self.slot_s

    @property
    def one_series_each(self) -> str:
        """The Prometheus metric with one series per OTLP series: what counts them at the sink."""
        return f"{self.metric}_count" if self.metric_type == "Histogram" else self.metric

    @property
    def workers(self) -> int:
        return max(1, math.ceil(self.rate / POINTS_PER_WORKER))

    def argv(self, binary: Path, endpoint: str, slot: int) -> list[str]:
        """One run: slot ``slot``'s series, one point each, sent over ``slot_s`` seconds.

        ``--unique-timeseries-duration`` is longer than the run, so that ``timebox`` never restarts within it."""
        return [
            str(binary), "metrics",
            "--otlp-endpoint", endpoint.removeprefix("http://"), "--otlp-insecure",
            "--metric-type", self.metric_type,
            "--otlp-metric-name", self.metric,
            "--otlp-attributes", f'service.instance.id="slot-{slot}"',
            "--unique-timeseries", "--unique-timeseries-duration", f"{self.slot_s * 10:g}s",
            "--workers", str(self.workers),
            "--rate", f"{self.points_per_slot / self.slot_s / self.workers:g}",
            "--duration", f"{self.slot_s:g}s",
            "--batch-size", str(BATCH_SIZE),
            # A refused export (the memory_limiter's UNAVAILABLE) is counted by the Collector; the run goes on, as
            # a service's exporter would.
            "--allow-export-failures",
        ]  # fmt: skip
