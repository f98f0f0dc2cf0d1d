"""Test doubles for code that uses tokenlat: an exporter that keeps what it is given instead of sending it."""

from __future__ import annotations

from opentelemetry.sdk.metrics.export import Metric, MetricExporter, MetricExportResult, MetricsData


class CapturingExporter(MetricExporter):
    """Keeps every export; stands in for the OTLP exporter (behind TokenlatMetricExporter) so nothing leaves the
    process. ``configure(metric_exporter=CapturingExporter())`` gives a pipeline a test can read."""

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
        """The metrics of the latest export by name (cumulative: the latest holds everything so far)."""
        if not self.exports:
            return {}
        return {m.name: m for rm in self.exports[-1].resource_metrics for sm in rm.scope_metrics for m in sm.metrics}

    def metric(self, name: str) -> Metric | None:
        return self.metrics().get(name)
