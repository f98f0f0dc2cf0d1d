"""Every use of the OpenTelemetry Python SDK's private parts, in one place.

tokenlat aggregates its histograms itself (see ``histograms``) and joins the SDK's export by wrapping the metric
exporter (``TokenlatMetricExporter``), because the Python SDK has no MetricProducer: the metrics SDK
specification's hook for "already aggregated points from elsewhere", which Go, Java and JS implement. Once it lands
(open-telemetry/opentelemetry-python#4768, PR #5419), tokenlat's store registers as a producer on the reader and
this module goes away. Until then the one private thing needed is finding the wrapped exporters behind a
MeterProvider's readers; tests pin that it works with the SDK in use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from opentelemetry.metrics import MeterProvider

if TYPE_CHECKING:
    from tokenlat.histograms import MetricStore


def attach_to_exporters(provider: MeterProvider, store: MetricStore) -> bool:
    """Attach ``store`` to every TokenlatMetricExporter behind the provider's readers; False when there is none.

    The SDK keeps readers (``MeterProvider._metric_readers``) and their exporters (``_exporter``) private, so this
    is best effort; where it finds none, call ``exporter.attach(metrics.store)`` yourself.
    """
    from tokenlat.histograms import TokenlatMetricExporter

    found = False
    for reader in getattr(provider, "_metric_readers", ()):
        exporter = getattr(reader, "_exporter", None)
        if isinstance(exporter, TokenlatMetricExporter):
            exporter.attach(store)
            found = True
    return found
