"""OpenTelemetry test doubles shared by the library tests (CapturingExporter is tokenlat.testing's)."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    Metric,
    PeriodicExportingMetricReader,
)

from tokenlat import semconv
from tokenlat.histograms import TokenlatMetricExporter
from tokenlat.recorder import TokenMetrics
from tokenlat.testing import CapturingExporter

MODEL = {semconv.GEN_AI_REQUEST_MODEL: "m-1", semconv.GEN_AI_OPERATION_NAME: "chat"}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Pipeline:
    """A MeterProvider exporting through TokenlatMetricExporter into a CapturingExporter, with a fake clock."""

    def __init__(self, exponential: bool = False, **options: object) -> None:
        # An hour between exports: the tests export with force_flush().
        self.clock = FakeClock()
        self.exporter = CapturingExporter()
        reader = PeriodicExportingMetricReader(TokenlatMetricExporter(self.exporter), export_interval_millis=3_600_000)
        self.provider = MeterProvider(metric_readers=[reader])
        self.metrics = TokenMetrics(self.provider, clock=self.clock, exponential=exponential, **options)  # type: ignore[arg-type]

    def collect(self) -> dict[str, Metric]:
        self.provider.force_flush()
        return self.exporter.metrics()

    def close(self) -> None:
        self.provider.shutdown()


def point(metrics: dict[str, Metric], name: str, **attrs: str) -> HistogramDataPoint:
    points = [dp for dp in metrics[name].data.data_points if all(dp.attributes.get(k) == v for k, v in attrs.items())]
    assert len(points) == 1, points
    return points[0]  # type: ignore[return-value]
