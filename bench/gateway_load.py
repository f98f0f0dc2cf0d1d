"""One step of the gateway bench: a load held steady while the meter reads the gateway and the sink.

A step is a load (:class:`~bench.telemetrygen.Load`, run as telemetrygen's runs one slot after the other, or
:class:`~bench.gateway_library.LibraryLoad`, run as one process using the library) held for a warm-up and a
measured window (at least one interval, so that every series is counted once); then the bench waits for the
gateway's exporter queue to drain before the next step. The warm-up is two intervals and at least ``warmup_s``
(``WARMUP_S`` by default): the first interval brings the step's new series, and a sink registers a new series at
many times the cost of a sample of a known one (VictoriaMetrics took 0.9 cores while a step at 14,000 points a
second brought its new series); measured during that, the sink would be the limit, and a deployment's series are
not new every minute. Everything runs in the main thread: ``ProcessGroup.start`` must (PR_SET_PDEATHSIG), and the
loop's ticks are the samples' clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

from bench.gateway_meter import (
    ACCEPTED,
    LIMITER_REFUSED,
    QUEUE_SIZE,
    RECEIVER_REFUSED,
    SENT,
    Reading,
    Samples,
    Window,
    collector_metrics,
)
from bench.gateway_stack import Stack
from bench.telemetrygen import Load
from tokenlat_cli.verify.processes import ManagedProcess, log_tail
from tokenlat_cli.verify.promql import PromQLError

WARMUP_S = 20.0
#: A step is steady when it exported at least this share of what it accepted, less what one batch may still hold at
#: the end of the window (``BATCH_S``: the built-in profiles' batch timeout), which matters in short windows.
STEADY_SHARE = 0.95
BATCH_S = 1.0
TICK_S = 0.25
#: How long the exporter queue may take to drain after a step before the next one starts anyway.
DRAIN_S = 60.0

Say = Callable[[str], None]


class StepLoad(Protocol):
    """What a step needs to know of its load (bench/telemetrygen.Load, bench/gateway_library.LibraryLoad)."""

    @property
    def metric_type(self) -> str: ...
    @property
    def rate(self) -> float: ...
    @property
    def interval_s(self) -> float: ...
    @property
    def series(self) -> int: ...
    @property
    def series_per_point(self) -> float: ...
    @property
    def measure_floor_s(self) -> float: ...
    @property
    def one_series_each(self) -> str | None: ...


class Driver(Protocol):
    """What sends the load: started by ``tick``, ended by ``finish``."""

    started: int
    failures: list[str]

    def tick(self) -> None: ...
    def finish(self) -> None: ...


class Generator:
    """telemetrygen runs, one per slot, each started ``slot_s`` after the one before (bench/telemetrygen.py)."""

    def __init__(self, stack: Stack, binary: Path, load: Load) -> None:
        self.stack, self.binary, self.load = stack, binary, load
        self.running: list[ManagedProcess] = []
        self.started = 0
        self.failures: list[str] = []
        self.next_at = time.monotonic()

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self.next_at:
            slot = self.started % self.load.slots
            # Logs cycle over a few more names than slots: a run may still be flushing when its slot comes round.
            log = self.stack.workdir / f"telemetrygen-{self.started % (self.load.slots + 2)}.log"
            argv = self.load.argv(self.binary, self.stack.endpoint, slot)
            self.running.append(self.stack.group.start(f"telemetrygen slot {slot}", argv, log))
            self.started += 1
            self.next_at += self.load.slot_s
        self.reap()

    def reap(self) -> None:
        for process in [p for p in self.running if p.popen.poll() is not None]:
            process.stop()  # closes its log; the process has exited
            self.running.remove(process)
            if process.popen.returncode != 0:
                self.failures.append(f"exit {process.popen.returncode}: {log_tail(process.log_path, 5)}")

    def finish(self) -> None:
        """Let the runs under way end (each within its slot and a flush)."""
        deadline = time.monotonic() + self.load.slot_s + 15
        while self.running and time.monotonic() < deadline:
            time.sleep(TICK_S)
            self.reap()
        for process in self.running:
            process.stop(grace=2.0)
        self.reap()


@dataclass
class Step:
    """One load held steady, measured. Rates are per second; CPU in cores used; RSS in MiB."""

    sweep: str
    metric_type: str
    offered_rate: float
    interval_s: float
    series: int
    series_per_point: float
    prometheus_series: int
    window: Window
    gateway_rss_mib_mean: float
    gateway_rss_mib_max: float
    sink_rss_mib_mean: float
    sink_rss_mib_max: float
    queue_max: float
    gateway_cores_max: float  # the busiest second's
    series_at_sink: float | None
    countable: bool  # whether the sink can count the series (it stores no native histograms sent by remote write)
    generator_runs: int
    generator_failures: list[str] = field(default_factory=list)

    @property
    def accepted_rate(self) -> float:
        return self.window.per_second[ACCEPTED]

    @property
    def exported_rate(self) -> float:
        return self.window.per_second[SENT]

    @property
    def series_sent(self) -> float:
        """OTLP series the accepted points stand for: each series sends once per interval, and a slot's run that
        fell short of its rate sent fewer of them (``series`` is what the load planned)."""
        return min(float(self.series), self.accepted_rate * self.interval_s)

    @property
    def active_series(self) -> float:
        """Prometheus series: as counted at the sink, else as sent."""
        counted = self.series_at_sink if self.series_at_sink else self.series_sent
        return counted * self.series_per_point

    @property
    def refused_rate(self) -> float:
        return max(self.window.per_second[LIMITER_REFUSED], self.window.per_second[RECEIVER_REFUSED])

    @property
    def refusing(self) -> bool:
        return self.refused_rate > 0

    @property
    def carried_rate(self) -> float:
        """Points a second that went through: accepted and exported. When the exporter falls behind, what it
        accepted waits in the queue and its CPU is spent later, so accepted points alone would flatter the gateway."""
        return min(self.accepted_rate, self.exported_rate)

    @property
    def steady(self) -> bool:
        """Exported about what it accepted (the queue did not grow), and refused nothing."""
        in_batch = self.accepted_rate * BATCH_S / self.window.seconds
        return not self.refusing and self.exported_rate >= STEADY_SHARE * self.accepted_rate - in_batch

    @property
    def points_per_core(self) -> float:
        return self.carried_rate / self.window.gateway_cores if self.window.gateway_cores > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        return {
            **asdict(self),
            "accepted_rate": self.accepted_rate,
            "exported_rate": self.exported_rate,
            "carried_rate": self.carried_rate,
            "steady": self.steady,
            "series_sent": self.series_sent,
            "active_series": self.active_series,
            "refused_rate": self.refused_rate,
            "refusing": self.refusing,
            "points_per_core": self.points_per_core,
        }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def sink_series(stack: Stack, metric: str | None, seconds: float) -> float | None:
    """Series of ``metric`` the sink received a sample of in the last ``seconds`` (None if it could not say: a
    sink still busy with the step's backlog may time out, so it is asked three times)."""
    for _ in range(3 if metric else 0):
        try:
            return stack.backend.query.scalar(f"count(count_over_time({metric}[{round(seconds)}s]))")
        except PromQLError:
            time.sleep(2.0)
    return None


def run_step(
    stack: Stack,
    generator: Driver,
    load: StepLoad,
    sweep: str,
    measure_s: float,
    say: Say,
    warmup_s: float = WARMUP_S,
) -> Step:
    samples = Samples()
    measure_s = max(measure_s, load.measure_floor_s)  # every series sends in the window
    start_at = time.monotonic() + max(2 * load.interval_s, warmup_s)
    end_at = start_at + measure_s
    start: Reading | None = None
    next_sample = start_at
    while True:
        generator.tick()
        now = time.monotonic()
        if start is None and now >= start_at:
            start = Reading.take(stack.gateway_pid, stack.sink_pid, stack.collector.telemetry_url)
        if start is not None and now >= next_sample:
            samples.take(stack.gateway_pid, stack.sink_pid, stack.collector.telemetry_url)
            next_sample += 1.0
        if now >= end_at:
            break
        time.sleep(TICK_S)
    assert start is not None
    end = Reading.take(stack.gateway_pid, stack.sink_pid, stack.collector.telemetry_url)
    generator.finish()
    series_at_sink = sink_series(stack, load.one_series_each, time.monotonic() - start.at)
    step = Step(
        sweep=sweep,
        metric_type=load.metric_type,
        offered_rate=load.rate,
        interval_s=load.interval_s,
        series=load.series,
        series_per_point=load.series_per_point,
        prometheus_series=round(load.series * load.series_per_point),
        window=Window.between(start, end),
        gateway_rss_mib_mean=_mean(samples.gateway_rss_mib),
        gateway_rss_mib_max=max(samples.gateway_rss_mib, default=0.0),
        sink_rss_mib_mean=_mean(samples.sink_rss_mib),
        sink_rss_mib_max=max(samples.sink_rss_mib, default=0.0),
        queue_max=max(samples.queue, default=0.0),
        gateway_cores_max=max(samples.gateway_cores, default=0.0),
        series_at_sink=series_at_sink,
        countable=load.one_series_each is not None,
        generator_runs=generator.started,
        generator_failures=generator.failures,
    )
    drain(stack, say)
    return step


def drain(stack: Stack, say: Say) -> None:
    """Wait until the gateway's exporter queue is empty, so that a step does not inherit the last one's backlog."""
    deadline = time.monotonic() + DRAIN_S
    while collector_metrics(stack.collector.telemetry_url)[QUEUE_SIZE] > 0:
        if time.monotonic() > deadline:
            say(f"gateway: the exporter queue did not drain within {DRAIN_S:.0f}s; going on")
            return
        time.sleep(0.5)
