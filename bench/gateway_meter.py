"""What the gateway bench reads while the load runs: CPU and memory from /proc, the Collector's own metrics.

CPU is each process's user + system time from /proc/PID/stat (bench/nginx.py's ``cpu_seconds``), so a figure is in
cores of CPU the process actually used, whatever else ran on the machine; wall time would count the time it waited
for a core. telemetrygen runs as short-lived children (bench/telemetrygen.py): their CPU is what this process's
reaped children used (getrusage RUSAGE_CHILDREN), counted when each is reaped. RSS is VmRSS (bench/soak.py).
"""

from __future__ import annotations

import resource
import time
from collections import Counter
from dataclasses import dataclass, field

import requests

from bench.nginx import cpu_seconds
from bench.sidecar import machine_busy
from bench.soak import rss_mib

#: The Collector's own counters the bench reads (metric points; the names at the pinned release, checked in
#: memorylimiterprocessor's and the helpers' generated telemetry).
ACCEPTED = "otelcol_receiver_accepted_metric_points"
RECEIVER_REFUSED = "otelcol_receiver_refused_metric_points"
LIMITER_REFUSED = "otelcol_processor_memory_limiter_refused_metric_points"
SENT = "otelcol_exporter_sent_metric_points"
SEND_FAILED = "otelcol_exporter_send_failed_metric_points"
ENQUEUE_FAILED = "otelcol_exporter_enqueue_failed_metric_points"
QUEUE_SIZE = "otelcol_exporter_queue_size"
COUNTERS = (ACCEPTED, RECEIVER_REFUSED, LIMITER_REFUSED, SENT, SEND_FAILED, ENQUEUE_FAILED)


def collector_metrics(telemetry_url: str) -> Counter[str]:
    """The Collector's own metrics, each summed over its labels (receivers, transports, exporters).

    Read by name as exposed (no ``_total``: prometheus_client's parser would add one to every counter)."""
    with requests.Session() as session:
        session.trust_env = False  # a local service: never through the environment's proxy
        text = session.get(telemetry_url, timeout=5).text
    sums: Counter[str] = Counter()
    for line in text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            sums[series.split("{", 1)[0]] += float(value)
    return sums


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class Reading:
    """Cumulative figures at one instant; two of them make a window."""

    at: float
    gateway_cpu: float
    sink_cpu: float
    generator_cpu: float
    machine_cpu: float | None
    counters: dict[str, float]

    @classmethod
    def take(cls, gateway_pid: int, sink_pid: int, telemetry_url: str) -> Reading:
        metrics = collector_metrics(telemetry_url)
        return cls(
            at=time.monotonic(),
            gateway_cpu=cpu_seconds(gateway_pid),
            sink_cpu=cpu_seconds(sink_pid),
            generator_cpu=children_cpu_seconds(),
            machine_cpu=machine_busy(),
            counters={name: metrics[name] for name in COUNTERS},
        )


@dataclass
class Samples:
    """RSS, the exporter queue and the gateway's CPU, sampled about every second of the measured window."""

    gateway_rss_mib: list[float] = field(default_factory=list)
    sink_rss_mib: list[float] = field(default_factory=list)
    queue: list[float] = field(default_factory=list)
    gateway_cores: list[float] = field(default_factory=list)  # per interval between two samples
    _last_cpu: tuple[float, float] | None = None

    def take(self, gateway_pid: int, sink_pid: int, telemetry_url: str) -> None:
        now, cpu = time.monotonic(), cpu_seconds(gateway_pid)
        if self._last_cpu is not None and now > self._last_cpu[0]:
            self.gateway_cores.append((cpu - self._last_cpu[1]) / (now - self._last_cpu[0]))
        self._last_cpu = (now, cpu)
        self.gateway_rss_mib.append(rss_mib(gateway_pid))
        self.sink_rss_mib.append(rss_mib(sink_pid))
        self.queue.append(collector_metrics(telemetry_url)[QUEUE_SIZE])


@dataclass(frozen=True)
class Window:
    """What happened between two readings, per second of wall time (CPU in cores used)."""

    seconds: float
    per_second: dict[str, float]
    gateway_cores: float
    sink_cores: float
    generator_cores: float
    machine_cores: float | None

    @classmethod
    def between(cls, start: Reading, end: Reading) -> Window:
        dt = end.at - start.at
        machine = None
        if start.machine_cpu is not None and end.machine_cpu is not None:
            machine = (end.machine_cpu - start.machine_cpu) / dt
        return cls(
            seconds=dt,
            per_second={name: (end.counters[name] - start.counters[name]) / dt for name in COUNTERS},
            gateway_cores=(end.gateway_cpu - start.gateway_cpu) / dt,
            sink_cores=(end.sink_cpu - start.sink_cpu) / dt,
            generator_cores=(end.generator_cpu - start.generator_cpu) / dt,
            machine_cores=machine,
        )
