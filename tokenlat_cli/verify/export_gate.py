"""A gate on a service's metric exports: every export logged, and, while the gate is shut, held.

The scale-out run needs to know exactly what each instrumented service sent and when, and at a few moments to have
one service alone export, so that a gateway's own counters tell which gateway that service's data reached. The gate
sits where the library's OTLP exporter would (``configure(metric_exporter=...)``, inside the library's own wrapper),
so everything else is as a service runs it: the SDK's periodic reader collects every export interval and calls the
gate, and the real OTLP exporter behind it sends (and retries) as always.

While the gate is shut, the reader's next export waits in it, holding its data, as it would on a slow network;
:meth:`ExportGate.let_one_through` lets exactly one pass. Because services export cumulative totals, a held export
loses nothing: the one after it carries everything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import MetricExporter, MetricExportResult, MetricsData

from tokenlat import semconv


@dataclass(frozen=True)
class ExportRecord:
    """One export that went through the gate."""

    #: Wall-clock times (time.time(), as the samples' timestamps) when it passed the gate and when it returned.
    started: float
    ended: float
    #: Data points it carried, and the service's request count in it (the duration histogram's count).
    points: int
    requests: int
    ok: bool


def data_points(metrics_data: MetricsData) -> int:
    """The data points an export carries (what a Collector's receiver counts as accepted metric points)."""
    return sum(
        len(metric.data.data_points)
        for resource in metrics_data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    )


def request_count(metrics_data: MetricsData) -> int:
    """The requests an export's duration histogram has counted, over all its attribute sets."""
    return sum(
        int(getattr(point, "count", 0))
        for resource in metrics_data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == semconv.DURATION_SPEC.name
        for point in metric.data.data_points
    )


class ExportGate(MetricExporter):
    """Wraps a service's metric exporter: logs every export, and holds them while shut (open at first)."""

    def __init__(self, inner: MetricExporter, service: str) -> None:
        # The reader asks the exporter for its temporality and aggregation: the inner exporter's, as the library's
        # own wrapper (tokenlat.histograms.TokenlatMetricExporter) passes them on.
        super().__init__(
            preferred_temporality=getattr(inner, "_preferred_temporality", None),
            preferred_aggregation=getattr(inner, "_preferred_aggregation", None),
        )
        self.inner = inner
        self.service = service
        self._cond = threading.Condition()
        self._shut = False
        self._passes = 0  # exports allowed through while shut
        self._in_flight = 0
        self._released = False
        self._waiting = 0  # exports held at the gate now
        self._discards = 0  # of those, how many to end unsent
        self.records: list[ExportRecord] = []
        #: When the latest export passed the gate (it may still be under way, its exporter retrying).
        self.last_started = 0.0

    # -- the reader's side

    def export(self, metrics_data: MetricsData, timeout_millis: float = 10_000, **kwargs: object) -> MetricExportResult:
        with self._cond:
            self._waiting += 1
            while self._shut and not self._passes and not self._released and not self._discards:
                self._cond.wait()
            self._waiting -= 1
            if self._discards:
                self._discards -= 1
                return MetricExportResult.FAILURE
            if self._shut and self._passes:
                self._passes -= 1
            self._in_flight += 1
            started = self.last_started = time.time()
        result = MetricExportResult.FAILURE
        try:
            result = self.inner.export(metrics_data, timeout_millis=timeout_millis, **kwargs)
            return result
        finally:
            record = ExportRecord(
                started,
                time.time(),
                data_points(metrics_data),
                request_count(metrics_data),
                result is MetricExportResult.SUCCESS,
            )
            with self._cond:
                self.records.append(record)
                self._in_flight -= 1
                self._cond.notify_all()

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        return self.inner.force_flush(timeout_millis=timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: object) -> None:
        self.release()
        self.inner.shutdown(timeout_millis=timeout_millis, **kwargs)

    # -- the run's side

    def shut(self, timeout: float) -> None:
        """Hold every export from now on; return once none is under way (TimeoutError after ``timeout``)."""
        with self._cond:
            self._shut = True
            self._passes = 0
            if not self._cond.wait_for(lambda: self._in_flight == 0, timeout):
                raise TimeoutError(f"{self.service}: an export still under way after {timeout:g}s")

    def let_one_through(self, timeout: float) -> ExportRecord:
        """While shut: let the next export pass, and return its record once it has returned."""
        with self._cond:
            before = len(self.records)
            self._passes = 1
            self._cond.notify_all()
            if not self._cond.wait_for(lambda: len(self.records) > before, timeout):
                self._passes = 0
                raise TimeoutError(f"{self.service}: no export within {timeout:g}s of letting one through")
            return self.records[before]

    def discard_held(self, timeout: float) -> None:
        """While shut: wait for the next export to be held at the gate, and end it unsent (the exporter reports a
        failure, as for a network error). The service's last export then goes out alone: with cumulative data, the
        held one carried nothing the last does not."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._waiting > 0, timeout):
                raise TimeoutError(f"{self.service}: no export held at the gate within {timeout:g}s")
            self._discards = self._waiting
            self._cond.notify_all()

    def open(self) -> None:
        """Let every export through again."""
        with self._cond:
            self._shut = False
            self._passes = 0
            self._cond.notify_all()

    def release(self) -> None:
        """Open for good, whatever is asked later: before the service shuts down (its last export must pass) and
        when the run is stopped."""
        with self._cond:
            self._released = True
            self._cond.notify_all()

    def snapshot(self) -> Sequence[ExportRecord]:
        with self._cond:
            return list(self.records)
