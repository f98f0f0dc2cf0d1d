"""One-shot OTLP exports: whether the Collector's receiver accepts a given client, and verify's own probes."""

from __future__ import annotations

import logging
import time

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from tokenlat.configure import TLSFiles

PROBE_METRIC = "tokenlat.verify.probe"


def _probe_data() -> MetricsData:
    now = time.time_ns()
    point = NumberDataPoint(attributes={}, start_time_unix_nano=now, time_unix_nano=now, value=1)
    metric = Metric(
        name=PROBE_METRIC,
        description="verify's TLS probe",
        unit="1",
        data=Sum([point], AggregationTemporality.CUMULATIVE, is_monotonic=True),
    )
    scope = ScopeMetrics(InstrumentationScope("tokenlat.verify"), [metric], schema_url="")
    return MetricsData([ResourceMetrics(Resource.create({"service.name": "tokenlat-verify-probe"}), [scope], "")])


def export_metrics(endpoint: str, data: MetricsData, tls: TLSFiles | None, timeout: float = 5.0) -> bool:
    """Whether one OTLP/gRPC export of ``data`` succeeds (a refused handshake fails it, after retries within
    ``timeout``). ``tls`` None: plain text."""
    # Imported here: gRPC's C core reads GRPC_VERBOSITY when it loads, after the verify command has set it.
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    options = tls.grpc_options() if tls is not None else {"insecure": True}
    exporter = OTLPMetricExporter(endpoint=endpoint, timeout=timeout, **options)  # type: ignore[arg-type]
    # A refusal is the expected outcome of some probes: the exporter's own error log would only alarm.
    exporter_logger = logging.getLogger(OTLPMetricExporter.__module__.rsplit(".", 1)[0])
    level = exporter_logger.level
    exporter_logger.setLevel(logging.CRITICAL)
    try:
        return exporter.export(data, timeout_millis=timeout * 1000) is MetricExportResult.SUCCESS
    finally:
        exporter.shutdown(timeout_millis=1000)
        exporter_logger.setLevel(level)


def otlp_export_accepted(endpoint: str, tls: TLSFiles, timeout: float = 5.0) -> bool:
    """Whether one small OTLP/gRPC export with these TLS files succeeds."""
    return export_metrics(endpoint, _probe_data(), tls, timeout)
