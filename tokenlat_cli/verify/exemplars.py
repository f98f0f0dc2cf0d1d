"""Exemplars end to end: from a slow bucket in Prometheus to the trace of the request that landed there.

The library attaches the trace id of each request's sampled span to the histogram buckets it records into; the
Collector's remote-write exporter sends them as exemplars; Prometheus (with exemplar storage) serves them at
``/api/v1/query_exemplars``. verify records the trace ids of the load's request spans as they end (in process, no
trace backend needed) and checks that the exemplars Prometheus returns point at exactly those requests.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

from tokenlat import semconv
from tokenlat_cli.verify.checks import Check
from tokenlat_cli.verify.promql import PrometheusClient, Queries

# The histograms whose exemplars verify follows: TTFT and duration, the two users drill into most.
EXEMPLAR_METRICS = (semconv.TTFT_SPEC, semconv.DURATION_SPEC)


class TraceIds(SpanExporter):
    """A span exporter that keeps only the trace ids (hex, as exemplars carry them) of the spans it is given."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ids: set[str] = set()

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ids = {format(span.context.trace_id, "032x") for span in spans if span.context is not None}
        with self._lock:
            self._ids |= ids
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    @property
    def ids(self) -> set[str]:
        with self._lock:
            return set(self._ids)


def exemplar_trace_ids(client: PrometheusClient, expr: str, start: float, end: float) -> list[str]:
    """The trace_id label of every exemplar of ``expr`` between ``start`` and ``end`` (unix seconds)."""
    return [
        exemplar.get("labels", {}).get("trace_id", "")
        for series in client.exemplars(expr, start, end)
        for exemplar in series.get("exemplars") or ()
    ]


def exemplar_check(
    client: PrometheusClient,
    queries: Queries,
    spec: semconv.MetricSpec,
    load_trace_ids: set[str],
    start: float,
    end: float,
) -> Check:
    """The exemplars of ``spec`` exist, and every one names a trace of the load's request spans."""
    name = f"{semconv.prometheus_name(spec)} exemplars are the load's request traces"
    found = exemplar_trace_ids(client, queries.exemplar_series(spec), start, end)
    strangers = [trace_id for trace_id in found if trace_id not in load_trace_ids]
    passed = bool(found) and not strangers
    if not found:
        detail = "no exemplars in Prometheus"
    elif strangers:
        detail = f"{len(strangers)} name no request of the load, e.g. {strangers[0]!r}"
    else:
        detail = f"{len(set(found))} distinct traces among the load's {len(load_trace_ids)} request spans"
    return Check(
        name, "all of the load's", f"{len(found) - len(strangers)} of {len(found)}", None, "exact", passed, detail
    )
