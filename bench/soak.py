"""Soak: the sidecar and a service using the library under steady load; their memory and descriptors stay flat.

    python -m bench.soak --duration 1800 --markdown docs/benchmarks.md   # `make soak`: 30 minutes
    python -m bench.soak --duration 150                                   # what tests/e2e/test_soak.py runs

A leak that costs a few hundred bytes a request goes unseen in a test of a few hundred requests and takes a
service down after a week. So the processes run for a long time under the load they meet in production, and what
they hold is sampled: the resident set (VmRSS) and the open file descriptors, from /proc.

Processes, each a child in a :class:`~tokenlat_cli.verify.processes.ProcessGroup` (stopped however the run ends):

  sink     the built Collector (tokenlat-otelcol): OTLP/gRPC in for the sidecar, OTLP/HTTP in for the library,
           into its debug exporter; its own telemetry counts the metric points each receiver accepted
  model    verify's synthetic model server (``start_synthetic``)
  sidecar  ``tokenlat sidecar`` in front of it, as an operator runs it, exporting to the sink every few seconds
           (exponential histograms); its idle and head timeouts shortened so that those limits run all along
  library  ``python -m bench.soak --child library``: a process that streams from the model server and measures
           with ``configure()`` and the stream wrapper, as a service does, exporting to the sink (explicit buckets)
  this     the client load through the sidecar, and the sampler

The load, in both measured processes: steady streams (``--concurrency`` at a time, verify's request with its checks
of every token and of the usage report), each with one of ``MODELS`` (a bounded set: the attribute sets stay under
the series cap, and a leak cannot hide behind a growing set); plus clients that go away mid-stream. Through the
sidecar also connections that exercise its limits: one idle after a request until the idle timeout closes it, one
idle before its first byte, one that never finishes its request head (a 408 after the head timeout).

After the warm-up (``WARMUP_SHARE`` of the run), a process is flat when its RSS grows by less than
``RSS_SLOPE_LIMIT_MIB_PER_HOUR`` (least-squares slope over the samples after warm-up, extrapolated to an hour) and
its descriptors by at most ``FD_TREND_LIMIT`` (the median of the last third of those samples less the median of the
first third: the connections the load holds move the count by a few either way at any instant, and a leak moves
the median). The run also checks what it relies on (every steady stream succeeded, every limit ran, the sink
received both processes' exports) and exits 1 otherwise, figures not written.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import requests
import yaml
from yarl import URL

from bench.hot_path import (
    Check,
    _positive,
    machine,
    markdown_preamble,
    markdown_table,
    markdown_verdicts,
    text_table,
    verdict_lines,
    write_markdown,
)
from tokenlat import semconv
from tokenlat.configure import configure
from tokenlat.recorder import TokenMetrics
from tokenlat.stream import wrap_async_stream
from tokenlat_cli.verify import load
from tokenlat_cli.verify.processes import ManagedProcess, ProcessGroup

if TYPE_CHECKING:
    from tokenlat_cli.verify.services import CollectorEndpoints

BEGIN = "<!-- soak:begin -->"
END = "<!-- soak:end -->"
SECTION_HEADING = "## Soak: memory and descriptors under steady load"
REPO = Path(__file__).resolve().parents[1]

DEFAULT_DURATION = 1800.0
DEFAULT_CONCURRENCY = 20
#: The first share of the run is warm-up: imports finish, every attribute set and code path appears, the pools and
#: the exporters' buffers reach their size. Judged after it.
WARMUP_SHARE = 0.2
#: Flat: RSS grows by less than this, fitted over the samples after warm-up and extrapolated to an hour. A leak of
#: every request's attributes (about 40 requests a second in each process) grew it by 50-90 MiB an hour in 3-minute
#: runs (--inject-leak); without it, the tail of the warm-up still shows as up to some 30 MiB an hour in a run that
#: short, and as a few MiB an hour in 30 minutes.
RSS_SLOPE_LIMIT_MIB_PER_HOUR = 40.0
#: Flat: the median descriptor count of the last third of the samples after warm-up is at most this above the
#: first third's. Any leak per request or per connection moves it by hundreds in minutes.
FD_TREND_LIMIT = 2
#: The bounded set of models the load asks for (so many attribute sets per metric, well under the cap of 2,000).
MODELS = tuple(f"soak-model-{i}" for i in range(8))
#: Clients that go away mid-stream, in each measured process, each after a pause between streams.
DISCONNECTERS = 2
DISCONNECT_PAUSE_S = 0.5
#: The sidecar's limits, shortened from 75 s and 10 s so that each runs every few seconds.
IDLE_TIMEOUT_S = 3.0
HEAD_TIMEOUT_S = 2.0
#: How often both processes export (OTEL_METRIC_EXPORT_INTERVAL): often, so that the export path runs hundreds of
#: times in a soak.
EXPORT_INTERVAL_S = 5.0
#: A limit connection the sidecar has not closed within this is a failure (it must close it within its timeout).
LIMIT_WAIT_S = 30.0
#: The library child's status line, which this process reads from its log.
STATUS_PREFIX = "soak-library status "
SIDECAR, LIBRARY = "sidecar", "library"
CHAT_PATH = "/v1/chat/completions"
# What the probes of the sidecar's limits send: a request and then nothing (the connection idles until the idle
# timeout), nothing at all, and a request head that never ends (a 408 after the head timeout).
LIMIT_PROBES = {
    "idle after a request": b"GET /v1/models HTTP/1.1\r\nHost: soak\r\n\r\n",
    "idle before its first byte": b"",
    "unfinished request head": b"POST /v1/chat/completions HTTP/1.1\r\nHost: soak\r\n",
}
# A bug that keeps every request's attributes and ids: what --inject-leak loads into both processes
# (sitecustomize, imported at start-up), to show that the judgement catches a real leak.
LEAK_SITECUSTOMIZE = """\
import tokenlat.recorder

_kept = []
_request = tokenlat.recorder.TokenMetrics.request


def request(self, attributes=None, *args, **kwargs):
    _kept.append((dict(attributes or {}), kwargs.get("request_id"), kwargs.get("user_id")))
    return _request(self, attributes, *args, **kwargs)


tokenlat.recorder.TokenMetrics.request = request
"""


# --- the load ---------------------------------------------------------------------------------------------------


@dataclass
class LoadCounts:
    """What one process's load did so far; ``failures`` keeps the first few messages, ``failed`` counts them all."""

    requests: int = 0
    failed: int = 0
    cut: int = 0
    limit_probes: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failed += 1
        if len(self.failures) < 5:
            self.failures.append(message)


class Load:
    """Steady streams and clients that go away, against ``url``, until :meth:`stop`; measured by ``metrics`` in this
    process when given (the library), else by whatever is at ``url`` (the sidecar)."""

    def __init__(self, url: str, concurrency: int, metrics: TokenMetrics | None, seed: int = 0) -> None:
        self.url = url
        self.concurrency = concurrency
        self.metrics = metrics
        self.seed = seed
        self.counts = LoadCounts()
        self._stop = asyncio.Event()
        self._index = itertools.count()

    def stop(self) -> None:
        self._stop.set()

    async def run(self, extra: Sequence[Callable[[], Awaitable[None]]] = ()) -> None:
        """The workers (and ``extra`` ones, each called in a loop) until :meth:`stop`; each ends its request first.

        A worker that raises what it does not expect (a bug) cancels the others and ends the load with it: gathered,
        the others went on against a closed session, whose error a repeating worker caught and met again without
        ever yielding, and the soak hung with a core busy."""
        connector = aiohttp.TCPConnector(limit=self.concurrency + DISCONNECTERS)
        timeout = aiohttp.ClientTimeout(total=120, sock_connect=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [self._steady(session) for _ in range(self.concurrency)]
            workers += [self._repeat(lambda: self._cut_stream(session)) for _ in range(DISCONNECTERS)]
            workers += [self._repeat(probe) for probe in extra]
            tasks = [asyncio.ensure_future(worker) for worker in workers]
            try:
                await asyncio.gather(*tasks)
            finally:  # before the session closes (a TaskGroup's job, from Python 3.11)
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    def _model(self, index: int) -> str:
        return MODELS[index % len(MODELS)]

    async def _steady(self, session: aiohttp.ClientSession) -> None:
        while not self._stop.is_set():
            index = next(self._index)
            model = self._model(index)
            rng = random.Random(self.seed * 1_000_003 + index)
            attributes = {semconv.GEN_AI_REQUEST_MODEL: model}
            try:
                # verify's request: checks every token's position and the usage report against the client's count.
                await load._one_request(session, index, self.url, model, rng, self.metrics, attributes, [])
                self.counts.requests += 1
            except (aiohttp.ClientError, RuntimeError, ValueError, asyncio.TimeoutError) as exc:
                self.counts.fail(f"request {index}: {type(exc).__name__}: {exc}")

    async def _repeat(self, step: Callable[[], Awaitable[None]]) -> None:
        while not self._stop.is_set():
            try:
                await step()
            except (aiohttp.ClientError, OSError, RuntimeError, asyncio.TimeoutError) as exc:
                self.counts.fail(f"{type(exc).__name__}: {exc}")

    async def _cut_stream(self, session: aiohttp.ClientSession) -> None:
        """A client that reads a few events of a stream and goes away, closing its connection mid-stream."""
        index = next(self._index)
        model = self._model(index)
        body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "soak"}]}
        async with session.post(f"{self.url}{CHAT_PATH}", json=body) as response:
            if response.status != 200:
                raise RuntimeError(f"HTTP {response.status} for a stream to cut")
            events = load._events(response)
            if self.metrics is not None:
                events = wrap_async_stream(
                    events, self.metrics, attributes={semconv.GEN_AI_REQUEST_MODEL: model},
                    count_tokens=load._measured_tokens,
                )  # fmt: skip
            wanted = 1 + index % 8
            async for _ in events:
                wanted -= 1
                if wanted == 0:
                    break
            await events.aclose()  # the library records the request as cancelled
            response.close()  # drops the connection: the sidecar sees its client go away mid-stream
        self.counts.cut += 1
        await asyncio.sleep(DISCONNECT_PAUSE_S)

    def limit_probe(self, send: bytes) -> Callable[[], Awaitable[None]]:
        """A connection that sends ``send`` and then waits for the sidecar to close it (within ``LIMIT_WAIT_S``)."""
        address = URL(self.url)

        async def probe() -> None:
            reader, writer = await asyncio.open_connection(address.host, address.port)
            try:
                writer.write(send)
                await writer.drain()
                await asyncio.wait_for(_read_to_end(reader), LIMIT_WAIT_S)
            finally:
                writer.close()
                with contextlib.suppress(ConnectionError):
                    await writer.wait_closed()
            self.counts.limit_probes += 1

        return probe


async def _read_to_end(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


# --- the library child -------------------------------------------------------------------------------------------


async def _library_child(upstream: str, endpoint: str, concurrency: int, export_interval: float) -> int:
    """What a service does: configure() at start, a stream wrapper per request, shutdown() (the last export) at
    SIGTERM. Prints its counts every second for the parent's progress lines and checks."""
    telemetry = configure(
        endpoint=endpoint,
        protocol="http/protobuf",
        resource_attributes={"service.name": "tokenlat-soak-library"},
        export_interval_millis=export_interval * 1000,
        environ={},
    )
    work = Load(upstream, concurrency, telemetry.metrics, seed=1)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, work.stop)
    loop.add_signal_handler(signal.SIGINT, work.stop)

    async def report() -> None:
        while True:
            print(STATUS_PREFIX + json.dumps(asdict(work.counts)), flush=True)
            await asyncio.sleep(1.0)

    reporter = asyncio.create_task(report())
    try:
        await work.run()
    finally:
        reporter.cancel()
        telemetry.shutdown()
    print(STATUS_PREFIX + json.dumps(asdict(work.counts)), flush=True)
    return 0


def _first(counts: LoadCounts) -> str:
    """The first failures' messages, for a check's detail (nothing when there were none)."""
    return f" (first: {'; '.join(counts.failures)})" if counts.failures else ""


def library_counts(log_path: Path) -> LoadCounts:
    """The library child's last status line (the tail of its log only: it grows by a line a second)."""
    with log_path.open("rb") as log:
        log.seek(max(0, log_path.stat().st_size - 4096))
        tail = log.read().decode("utf-8", errors="replace")
    for line in reversed(tail.splitlines()):
        if line.startswith(STATUS_PREFIX):
            return LoadCounts(**json.loads(line[len(STATUS_PREFIX) :]))
    return LoadCounts()


# --- sampling and the judgement ------------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    """VmRSS of ``pid`` in MiB, from /proc (what the kernel charges the process with, shared pages included)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass
class Sample:
    elapsed: float
    requests: dict[str, int]
    rss_mib: dict[str, float]
    fds: dict[str, int]


@dataclass
class Flatness:
    """One process's samples after warm-up, judged."""

    process: str
    rss_start: float
    rss_after_warmup: float
    rss_end: float
    rss_min: float
    rss_max: float
    rss_slope_mib_per_hour: float
    fds_start: int
    fds_after_warmup: int
    fds_end: int
    fds_min: int
    fds_max: int
    fds_trend: float

    @property
    def rss_flat(self) -> bool:
        return self.rss_slope_mib_per_hour < RSS_SLOPE_LIMIT_MIB_PER_HOUR

    @property
    def fds_flat(self) -> bool:
        return self.fds_trend <= FD_TREND_LIMIT


def judge(process: str, samples: Sequence[Sample], warmup: float) -> Flatness:
    """Fit RSS over the samples after ``warmup`` seconds (least squares, per hour) and compare the descriptor
    counts of the window's first and last thirds (medians: robust to the connections open at any one instant)."""
    after = [s for s in samples if s.elapsed >= warmup]
    if len(after) < 3:
        raise ValueError(f"{len(after)} samples after the warm-up of {warmup:g}s: run longer or sample more often")
    hours = [s.elapsed / 3600 for s in after]
    rss = [s.rss_mib[process] for s in after]
    fds = [s.fds[process] for s in after]
    third = len(after) // 3
    return Flatness(
        process=process,
        rss_start=samples[0].rss_mib[process],
        rss_after_warmup=rss[0],
        rss_end=rss[-1],
        rss_min=min(rss),
        rss_max=max(rss),
        rss_slope_mib_per_hour=statistics.linear_regression(hours, rss).slope,
        fds_start=samples[0].fds[process],
        fds_after_warmup=fds[0],
        fds_end=fds[-1],
        fds_min=min(fds),
        fds_max=max(fds),
        fds_trend=statistics.median(fds[-third:]) - statistics.median(fds[:third]),
    )


@dataclass
class Result:
    duration: float
    warmup: float
    interval: float
    concurrency: int
    samples: list[Sample]
    checks: list[Check]
    flatness: list[Flatness]
    machine: dict[str, str]
    leak_injected: bool = False

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def flat(self) -> bool:
        return all(ok for _, ok, _ in self.targets())

    def targets(self) -> list[tuple[str, bool, str]]:
        out = []
        for f in self.flatness:
            out.append(
                (
                    f"{f.process} RSS grows < {RSS_SLOPE_LIMIT_MIB_PER_HOUR:g} MiB/hour after warm-up",
                    f.rss_flat,
                    f"{f.rss_slope_mib_per_hour:+.2f} MiB/hour; {f.rss_min:.1f}-{f.rss_max:.1f} MiB",
                )
            )
            out.append(
                (
                    f"{f.process} open descriptors grow by <= {FD_TREND_LIMIT} after warm-up",
                    f.fds_flat,
                    f"median of the last third - the first third's: {f.fds_trend:+g}; {f.fds_min}-{f.fds_max}",
                )
            )
        return out


# --- the run -------------------------------------------------------------------------------------------------------


def sink_config(endpoints: CollectorEndpoints) -> str:
    """The sink: the sidecar's OTLP/gRPC and the library's OTLP/HTTP in, each through its own receiver (so that
    the Collector's own metrics count each one's points), into the debug exporter, logging warnings only."""
    telemetry_host, telemetry_port = endpoints.telemetry.rsplit(":", 1)
    config = {
        "extensions": {"health_check": {"endpoint": endpoints.health}},
        "receivers": {
            "otlp/sidecar": {"protocols": {"grpc": {"endpoint": endpoints.otlp_grpc}}},
            "otlp/library": {"protocols": {"http": {"endpoint": endpoints.otlp_http}}},
        },
        "exporters": {"debug": {"verbosity": "basic"}},
        "service": {
            "extensions": ["health_check"],
            "telemetry": {
                "logs": {"level": "warn"},
                "metrics": {
                    "readers": [
                        {"pull": {"exporter": {"prometheus": {"host": telemetry_host, "port": int(telemetry_port)}}}}
                    ]
                },
            },
            "pipelines": {
                f"metrics/{name}": {"receivers": [f"otlp/{name}"], "exporters": ["debug"]}
                for name in (SIDECAR, LIBRARY)
            },
        },
    }
    return "# The soak's sink (bench/soak.py): counts what it receives, keeps nothing.\n" + yaml.safe_dump(config)


def receiver_points(telemetry_url: str) -> dict[str, dict[str, float]]:
    """Metric points accepted and refused per receiver, from the Collector's own metrics."""
    text = requests.get(telemetry_url, timeout=5).text
    points: dict[str, dict[str, float]] = {name: {"accepted": 0.0, "refused": 0.0} for name in (SIDECAR, LIBRARY)}
    for line in text.splitlines():
        for outcome in ("accepted", "refused"):
            if line.startswith(f"otelcol_receiver_{outcome}_metric_points"):
                for name in points:
                    if f'receiver="otlp/{name}"' in line:
                        points[name][outcome] += float(line.rsplit(" ", 1)[1])
    return points


def _env_with_path(extra: Path | None) -> dict[str, str]:
    """PYTHONPATH for a child: this repository (``bench`` is not installed) and, for the leak experiment, the
    directory of its sitecustomize."""
    parts = [str(extra)] if extra is not None else []
    parts += [str(REPO), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(p for p in parts if p)}


async def _drive(
    sidecar_url: str,
    sidecar: ManagedProcess,
    library: ManagedProcess,
    duration: float,
    interval: float,
    concurrency: int,
    say: Callable[[str], None],
) -> tuple[list[Sample], LoadCounts, dict[str, int]]:
    """The load through the sidecar and the sampler, for ``duration`` seconds; the samples, this load's counts and
    the sidecar's last stats."""
    work = Load(sidecar_url, concurrency, None)
    probes = [work.limit_probe(send) for send in LIMIT_PROBES.values()]
    running = asyncio.create_task(work.run(probes))
    pids = {SIDECAR: sidecar.popen.pid, LIBRARY: library.popen.pid}
    samples: list[Sample] = []
    stats: dict[str, int] = {}
    start = time.monotonic()
    async with aiohttp.ClientSession() as control:
        while True:
            elapsed = time.monotonic() - start
            for process in (sidecar, library):
                if process.popen.poll() is not None:
                    raise process.failure(f"exited with code {process.popen.returncode} during the soak")
            async with control.get(f"{sidecar_url}/-/tokenlat/stats") as response:
                stats = await response.json()
            library_done = library_counts(library.log_path).requests
            sample = Sample(
                elapsed=round(elapsed, 3),
                requests={SIDECAR: stats["requests"], LIBRARY: library_done},
                rss_mib={name: rss_mib(pid) for name, pid in pids.items()},
                fds={name: open_fds(pid) for name, pid in pids.items()},
            )
            samples.append(sample)
            say(
                f"soak {elapsed:6.0f}s/{duration:.0f}s: "
                + "; ".join(
                    f"{name} {sample.requests[name]:,} requests, RSS {sample.rss_mib[name]:.1f} MiB,"
                    f" {sample.fds[name]} fds"
                    for name in (SIDECAR, LIBRARY)
                )
            )
            if elapsed >= duration or running.done():
                break
            await asyncio.sleep(min(interval, max(0.0, duration - elapsed)))
    work.stop()
    await running
    return samples, work.counts, stats


def run(
    duration: float = DEFAULT_DURATION,
    interval: float | None = None,
    warmup: float | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    inject_leak: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Result:
    """The whole soak: start the processes, load and sample them for ``duration`` seconds, stop them, judge."""
    # Here, not at the top: the library child imports this module too, and should hold what a service holds, not
    # the Collector's and the profiles' machinery.
    from tokenlat_cli.verify.services import CollectorEndpoints, start_collector, start_sidecar, start_synthetic

    say = progress or (lambda _: None)
    interval = interval if interval is not None else max(1.0, min(5.0, duration / 90))
    warmup = warmup if warmup is not None else WARMUP_SHARE * duration
    with tempfile.TemporaryDirectory(prefix="tokenlat-soak-") as tmp, ProcessGroup() as group:
        workdir = Path(tmp)
        leak_dir = None
        if inject_leak:
            leak_dir = workdir / "leak"
            leak_dir.mkdir()
            (leak_dir / "sitecustomize.py").write_text(LEAK_SITECUSTOMIZE)
        endpoints = CollectorEndpoints.pick()
        sink = start_collector(group, workdir, sink_config(endpoints), endpoints, {})
        model = start_synthetic(group, workdir, ["--seed", "3"])
        sidecar_env = {
            **_env_with_path(leak_dir),
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://{endpoints.otlp_grpc}",
            "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
            "OTEL_METRIC_EXPORT_INTERVAL": str(round(EXPORT_INTERVAL_S * 1000)),
            "OTEL_SERVICE_NAME": "tokenlat-soak-sidecar",
            "TOKENLAT_HISTOGRAM": "exponential",
        }
        timeouts = ["--idle-timeout", str(IDLE_TIMEOUT_S), "--head-timeout", str(HEAD_TIMEOUT_S)]
        sidecar = start_sidecar(group, workdir, model.url, sidecar_env, timeouts)
        library_argv = [
            sys.executable, "-m", "bench.soak", "--child", "library", "--upstream", model.url,
            "--otlp", f"http://{endpoints.otlp_http}", "--concurrency", str(concurrency),
        ]  # fmt: skip
        library = group.start("soak library", library_argv, workdir / "library.log", _env_with_path(leak_dir))
        say(f"soak: sidecar {sidecar.url} (pid {sidecar.process.popen.pid}), library pid {library.popen.pid}")
        samples, counts, stats = asyncio.run(
            _drive(sidecar.url, sidecar.process, library, duration, interval, concurrency, say)
        )
        library.stop()  # SIGTERM: it finishes its streams and exports the last time
        library_code = library.popen.returncode
        library_final = library_counts(library.log_path)
        sidecar.process.stop()  # the drain, and its last export
        points = receiver_points(sink.telemetry_url)
    checks = [
        Check(
            "every steady stream through the sidecar succeeded",
            counts.failed == 0 and counts.requests > 0,
            f"{counts.requests:,} streams, {counts.failed} failures{_first(counts)}",
        ),
        Check(
            "every steady stream the library measured succeeded",
            library_code == 0 and library_final.failed == 0 and library_final.requests > 0,
            f"{library_final.requests:,} streams, {library_final.failed} failures{_first(library_final)},"
            f" exit code {library_code}",
        ),
        Check(
            "clients went away mid-stream, seen by the sidecar and recorded by the library",
            counts.cut > 0 and library_final.cut > 0 and stats.get("client_disconnects", 0) > 0,
            f"sidecar: {counts.cut:,} cut, {stats.get('client_disconnects', 0):,} client disconnects counted;"
            f" library: {library_final.cut:,} cut",
        ),
        Check(
            "the sidecar's idle and head timeouts ran",
            stats.get("idle_timeouts", 0) > 0 and stats.get("head_timeouts", 0) > 0,
            f"{stats.get('idle_timeouts', 0):,} idle timeouts, {stats.get('head_timeouts', 0):,} head timeouts,"
            f" {counts.limit_probes:,} probes closed",
        ),
        *(
            Check(
                f"the sink received the {name}'s exports and refused none",
                points[name]["accepted"] > 0 and points[name]["refused"] == 0,
                f"{points[name]['accepted']:,.0f} metric points accepted, {points[name]['refused']:,.0f} refused",
            )
            for name in (SIDECAR, LIBRARY)
        ),
    ]
    flatness = [judge(name, samples, warmup) for name in (SIDECAR, LIBRARY)]
    return Result(duration, warmup, interval, concurrency, samples, checks, flatness, machine(), inject_leak)


# --- reports -------------------------------------------------------------------------------------------------------

HEADERS = (
    "process",
    "RSS start MiB",
    "after warm-up",
    "end",
    "min-max after warm-up",
    "RSS slope MiB/hour",
    "fds start",
    "after warm-up",
    "end",
    "min-max after warm-up",
    "fd trend",
)
SAMPLE_HEADERS = (
    "elapsed",
    "sidecar requests",
    "sidecar RSS MiB",
    "sidecar fds",
    "library requests",
    "library RSS MiB",
    "library fds",
)
#: The table of samples shows about this many, evenly spaced.
SAMPLE_ROWS = 16


def table_rows(result: Result) -> list[tuple[str, ...]]:
    return [
        (
            f.process,
            f"{f.rss_start:.1f}",
            f"{f.rss_after_warmup:.1f}",
            f"{f.rss_end:.1f}",
            f"{f.rss_min:.1f}-{f.rss_max:.1f}",
            f"{f.rss_slope_mib_per_hour:+.2f}",
            str(f.fds_start),
            str(f.fds_after_warmup),
            str(f.fds_end),
            f"{f.fds_min}-{f.fds_max}",
            f"{f.fds_trend:+g}",
        )
        for f in result.flatness
    ]


def sample_rows(result: Result) -> list[tuple[str, ...]]:
    step = max(1, round(len(result.samples) / SAMPLE_ROWS))
    chosen = result.samples[::step]
    if chosen[-1] is not result.samples[-1]:
        chosen.append(result.samples[-1])
    rows = []
    for s in chosen:
        minutes, seconds = divmod(round(s.elapsed), 60)
        warm = " (warm-up)" if s.elapsed < result.warmup else ""
        rows.append(
            (
                f"{minutes}:{seconds:02d}{warm}",
                *(
                    cell
                    for name in (SIDECAR, LIBRARY)
                    for cell in (f"{s.requests[name]:,}", f"{s.rss_mib[name]:.1f}", str(s.fds[name]))
                ),
            )
        )
    return rows


def notes(result: Result) -> list[str]:
    last = result.samples[-1]
    rates = ", ".join(f"{name} {last.requests[name] / last.elapsed:.0f}" for name in (SIDECAR, LIBRARY))
    return [
        f"Warm-up: the first {result.warmup:.0f} s; samples every {result.interval:g} s, {len(result.samples)} in all;"
        f" requests a second: {rates} (the sidecar's include the cut streams and the limit probes' requests).",
        "RSS slope: least squares over the samples after warm-up, extrapolated to an hour. fd trend: the median"
        " descriptor count of the last third of those samples less that of the first third.",
    ]


def report(result: Result) -> str:
    lines = [
        text_table(HEADERS, table_rows(result)),
        "",
        text_table(SAMPLE_HEADERS, sample_rows(result)),
        "",
        *notes(result),
        "",
        *verdict_lines(result.targets(), result.checks),
    ]
    if result.leak_injected:
        lines.insert(0, "LEAK INJECTED (--inject-leak): every request's attributes and ids are kept in both processes")
    return "\n".join(lines)


def markdown_figures(result: Result, command: str) -> str:
    workload = (
        f"{result.duration / 60:g} minutes; in each measured process {result.concurrency} steady streams at a time"
        f" ({len(MODELS)} models), {DISCONNECTERS} clients that go away mid-stream; through the sidecar also"
        f" {len(LIMIT_PROBES)} connections that run into its idle ({IDLE_TIMEOUT_S:g} s) and head"
        f" ({HEAD_TIMEOUT_S:g} s) timeouts; both export every {EXPORT_INTERVAL_S:g} s to a Collector."
    )
    return "\n".join(
        [
            *markdown_preamble(command, workload, result.machine),
            *markdown_table(HEADERS, table_rows(result)),
            "",
            *markdown_table(SAMPLE_HEADERS, sample_rows(result)),
            "",
            *(f"- {line}" for line in notes(result)),
            "",
            *markdown_verdicts(result.targets(), result.checks, "in the same run"),
        ]
    )


# --- entry point ---------------------------------------------------------------------------------------------------


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--duration", type=_seconds, default=DEFAULT_DURATION, help="seconds (default 1800)")
    parser.add_argument("--interval", type=_seconds, help="seconds between samples (default: duration/90, 1-5 s)")
    parser.add_argument("--warmup", type=_seconds, help=f"seconds not judged (default: {WARMUP_SHARE:.0%} of the run)")
    parser.add_argument(
        "--concurrency", type=_positive(1), default=DEFAULT_CONCURRENCY, help="steady streams per process (default 20)"
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="rewrite the figures section of this file")
    parser.add_argument("--json", type=Path, metavar="PATH", help="write every sample and the judgement as JSON")
    parser.add_argument(
        "--inject-leak",
        action="store_true",
        help="the experiment: keep every request's attributes and ids in both processes (figures not written)",
    )
    # The library process this run starts (internal).
    parser.add_argument("--child", choices=("library",), help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    parser.add_argument("--otlp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "library":
        return asyncio.run(_library_child(args.upstream, args.otlp, args.concurrency, EXPORT_INTERVAL_S))

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run(args.duration, args.interval, args.warmup, args.concurrency, args.inject_leak, progress)
    print(report(result))
    if args.json is not None:
        args.json.write_text(json.dumps(asdict(result), indent=1, default=str))
    if not result.passed:
        print("soak: a check FAILED; figures not written", file=sys.stderr)
        return 1
    if args.markdown is not None and not args.inject_leak:
        command = (
            "make soak" if args.duration == DEFAULT_DURATION else f"python -m bench.soak --duration {args.duration:g}"
        )
        write_markdown(args.markdown, markdown_figures(result, command), begin=BEGIN, end=END, heading=SECTION_HEADING)
        progress(f"soak: figures written to {args.markdown}")
    return 0 if result.flat else 1


if __name__ == "__main__":
    sys.exit(main())
