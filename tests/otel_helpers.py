"""OpenTelemetry test doubles shared by the library tests."""

from __future__ import annotations

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
    PeriodicExportingMetricReader,
)

from tokenlat import semconv
from tokenlat.histograms import TokenlatMetricExporter
from tokenlat.recorder import TokenMetrics

MODEL = {semconv.GEN_AI_REQUEST_MODEL: "m-1", semconv.GEN_AI_OPERATION_NAME: "chat"}


class CapturingExporter(MetricExporter):
    """Keeps what it is given; stands in for the OTLP exporter behind TokenlatMetricExporter."""

    def __init__(self) -> None:
        super().__init__()
        self.exports: list[MetricsData] = []

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        self.exports.append(metrics_data)
        return MetricExportResult.SUCCESS

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return True

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        pass

    def metrics(self) -> dict[str, Metric]:
        last = self.exports[-1]
        return {m.name: m for rm in last.resource_metrics for sm in rm.scope_metrics for m in sm.metrics}


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
