"""OpenTelemetry test doubles shared by the library tests."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import Metric, MetricExporter, MetricExportResult, MetricsData

from tokenlat import semconv

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
