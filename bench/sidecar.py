"""Latency and CPU the tokenlat sidecar adds per streamed chunk, and how closely what it measures matches the client.

    python -m bench.sidecar                                  # 3 rounds of 1200 streams, 100 at a time, each way
    python -m bench.sidecar --markdown docs/benchmarks.md    # also rewrite the figures there (`make bench`)

Three processes, so that nothing shares an event loop:

  synthetic server  ``tokenlat_cli.verify.synthetic.serve`` in a spawned child, fixed seed: request index i gets the
                    same plan (TTFT, gaps, length) from every fresh server; the child notes when it started each
                    response and wrote each chunk
  sidecar           ``tokenlat.sidecar.Sidecar`` in a spawned child (exponential histograms, scale 8, exported into
                    memory): it reports its CPU time, what it relayed and what it measured
  client            this process: aiohttp, ``--concurrency`` streams at a time, timing the arrival of every SSE event

The workload runs six times, each against a fresh server: direct, through the sidecar, through a sidecar that
relays without measuring (``measure=False``: the control that tells relaying from measuring), through nginx (the
reference, ``bench.nginx``: what users would otherwise put in the path; ``--reference none`` leaves it out), through
a TCP byte pipe (``bench.byte_pipe``: the floor of any proxy hop in Python on this machine), and direct again (the
rig's own noise). The sidecar is judged against nginx too: CPU per chunk at most ``TARGET_CPU_X_NGINX`` times
nginx's, added p99 at most nginx's plus ``TARGET_P99_OVER_NGINX_MS``.
Responses are matched by the index the server wrote into them (``chatcmpl-synthetic-<index>``), not by send order,
which concurrency shuffles. All processes read the same clock (CLOCK_MONOTONIC), so a chunk's latency can leave out
the server's own schedule and timer lateness: its offset at the client less its offset at the server. The latency a
proxy adds is a quantile of that through the proxy less the same quantile direct (``Result.shift``).

The run checks what it relies on and exits 1 (figures not written) otherwise; see ``check_runs``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import importlib.metadata
import itertools
import json
import math
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from opentelemetry.sdk.metrics.export import ExponentialHistogramDataPoint
from yarl import URL

from bench.byte_pipe import serve_byte_pipe
from bench.hot_path import (
    NEVER_MS,
    Check,
    _positive,
    machine,
    markdown_preamble,
    markdown_table,
    markdown_verdicts,
    merge_checks,
    text_table,
    verdict_lines,
    write_markdown,
)
from bench.nginx import MISSING as NGINX_MISSING
from bench.nginx import find_nginx, nginx_proxy
from tokenlat import semconv
from tokenlat.configure import Telemetry, configure
from tokenlat.sidecar import Sidecar, loops
from tokenlat.sse import iter_sse_data, openai_chunk_tokens, parse_openai_event
from tokenlat.testing import CapturingExporter
from tokenlat_cli.verify import synthetic
from tokenlat_cli.verify.statistics import dense_counts, native_quantile, true_quantile
from tokenlat_cli.verify.synthetic import Distribution, SyntheticConfig

BEGIN = "<!-- sidecar:begin -->"
END = "<!-- sidecar:end -->"
SECTION_HEADING = "## Sidecar: added latency and accuracy"

# Targets (see docs/benchmarks.md).
TARGET_ADDED_P99_MS = 1.0
TARGET_RELATIVE_ERROR = 0.02
# Against nginx, the reference (issue 10): the sidecar's CPU per chunk at most this many times nginx's, and its p99
# added latency at most nginx's plus this.
TARGET_CPU_X_NGINX = 2.0
TARGET_P99_OVER_NGINX_MS = 0.5

DEFAULT_REQUESTS = 1200
DEFAULT_CONCURRENCY = 100
DEFAULT_SEED = 7
DEFAULT_ROUNDS = 4  # one per position of the four proxied runs, which each round rotates
# verify's defaults (the synthetic server's own): TTFT around 120 ms, gaps around 12 ms, 16-48 tokens.
TTFT = "lognormal:0.12,0.35"
INTER_TOKEN = "lognormal:0.012,0.3"
OUTPUT_TOKENS = (16, 48)
# Scale 8: 256 buckets per doubling, each (2**(i/256), 2**((i+1)/256)], so an answer inside a bucket is within
# 0.27% of every value in it: far inside the 2% target, which then tests the sidecar's timing, not its buckets.
SCALE = 8
QUANTILES = (0.5, 0.9, 0.99)

DIRECT = "direct"
SIDECAR = "through the sidecar"
RELAY_ONLY = "through the sidecar (not measuring)"
BYTE_PIPE = "through a byte pipe (no HTTP)"
NGINX = "through nginx (the reference)"
DIRECT_AGAIN = "direct again"
RUNS = (DIRECT, SIDECAR, RELAY_ONLY, NGINX, BYTE_PIPE, DIRECT_AGAIN)
# The reference proxy the sidecar is compared with: nginx, or none (then the NGINX run is left out).
REFERENCES = ("nginx", "none")
# The runs through a proxy of any kind: their bytes must equal the direct run's.
PROXIED_RUNS = (SIDECAR, RELAY_ONLY, NGINX, BYTE_PIPE)
# The runs through a sidecar, and whether it measures: the one that does not is the control that tells relaying
# (aiohttp, the kernel) from measuring (parsing a copy of each chunk, recording its timing).
SIDECAR_RUNS = {SIDECAR: True, RELAY_ONLY: False}

CHAT_PATH = "/v1/chat/completions"
# One body for every request (a plan depends on the request index only); usage on, as OpenAI clients often ask.
BODY = json.dumps(
    {
        "model": synthetic.DEFAULT_MODEL,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": "Tell me about token latency."}],
    }
).encode()
# Warm-up streams stop at two tokens: they only have to open every connection and run every code path once.
WARM_BODY = json.dumps({**json.loads(BODY), "max_tokens": 2}).encode()
HEADERS = {"Content-Type": "application/json"}
CLIENT_TIMEOUT = aiohttp.ClientTimeout(total=120, sock_connect=10)
# The only bytes of a response that differ between two servers with the same seed: the wall-clock second.
CREATED = re.compile(rb'"created":\d+')
CHUNK_ID = re.compile(rb'"id":"chatcmpl-synthetic-(\d+)"')
# How long to wait for a child: its start (spawn, imports) and its report.
CHILD_TIMEOUT_S = 60.0

Progress = Callable[[str], None]
Plain = dict[str, Any]


# --- the child processes: common protocol ---------------------------------------------------------------------
# Parent and child talk over a Pipe: the child sends ("ready", port); the parent sends "start" after its warm-up
# (the child answers ("started", None) once its CPU clock runs) and "stop" after the measured streams (the child
# answers ("result", plain data)). A failure in the child comes back as ("error", traceback).


async def _receive(conn: Connection) -> Any:
    """The parent's next message, awaited without blocking the loop (the child keeps serving meanwhile)."""
    loop = asyncio.get_running_loop()
    readable = asyncio.Event()
    loop.add_reader(conn.fileno(), readable.set)
    try:
        await readable.wait()
    finally:
        loop.remove_reader(conn.fileno())
    return conn.recv()  # EOFError when the parent has gone: the child then stops


async def _expect(conn: Connection, message: str) -> None:
    received = await _receive(conn)
    if received != message:
        raise RuntimeError(f"expected {message!r} from the bench, got {received!r}")


async def _wait_idle(busy: Callable[[], bool], timeout: float = 10.0) -> None:
    # A handler finishes its bookkeeping after its last write, so the client can hold a whole body a moment
    # before the child has recorded it: wait for no request in flight before reading counters.
    deadline = time.monotonic() + timeout
    while busy() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


class _Pauses:
    """Garbage-collector pauses, per generation: a pause stops the loop, so every chunk waiting is late by it."""

    def __init__(self) -> None:
        self.started = 0.0
        self.count = [0, 0, 0]
        self.seconds = [0.0, 0.0, 0.0]
        self.longest = [0.0, 0.0, 0.0]

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self.started = time.perf_counter()
            return
        elapsed, generation = time.perf_counter() - self.started, info["generation"]
        self.count[generation] += 1
        self.seconds[generation] += elapsed
        self.longest[generation] = max(self.longest[generation], elapsed)

    def plain(self) -> Plain:
        return {"count": self.count, "seconds": self.seconds, "longest": self.longest}


async def _measured(
    conn: Connection,
    port: int,
    busy: Callable[[], bool],
    snapshot: Callable[[], Plain],
    *,
    harness: bool,
    profile: str | None = None,
) -> tuple[Plain, Plain, float, Plain]:
    """Serve until "stop"; return the snapshots at "start" and "stop", the CPU seconds between and the GC pauses.

    ``harness``: the process is part of the test rig (the synthetic server), not under test: its garbage
    collector is off while measuring, so that its pauses do not pass for latency the sidecar adds. The sidecar
    keeps its collector on, as it runs in production, and its pauses are reported.
    """
    conn.send(("ready", port))
    await _expect(conn, "start")
    await _wait_idle(busy)
    before = snapshot()
    profiler = cProfile.Profile() if profile else None
    pauses = _Pauses()
    gc.collect()  # the warm-up's garbage is not the measured streams' cost
    if harness:
        gc.disable()
    else:
        gc.callbacks.append(pauses)
    cpu = time.process_time()
    if profiler is not None:
        profiler.enable()
    conn.send(("started", None))
    try:
        await _expect(conn, "stop")
        await _wait_idle(busy)
    finally:
        if profiler is not None:
            profiler.disable()
        cpu = time.process_time() - cpu
        gc.enable()
        with contextlib.suppress(ValueError):
            gc.callbacks.remove(pauses)
    if profiler is not None and profile:
        profiler.dump_stats(profile)
    return before, snapshot(), cpu, pauses.plain()


def _child_main(conn: Connection, role: str, args: tuple[Any, ...]) -> None:
    """Entry point of a spawned child; any failure goes back to the bench as text."""
    try:
        # The sidecar runs on the loop `tokenlat sidecar` picks by default (uvloop when installed): what users run.
        run = loops.run if role == "sidecar" else asyncio.run
        run(_ROLES[role](conn, *args))
    except EOFError:
        pass  # the bench went away (it failed elsewhere): nothing to report to
    except BaseException:
        with contextlib.suppress(OSError, ValueError):
            conn.send(("error", traceback.format_exc()))
        sys.exit(1)
    finally:
        conn.close()


class Child:
    """The parent's handle on a child: its URL, and the start and stop of the measurement."""

    def __init__(self, name: str, conn: Connection, process: multiprocessing.process.BaseProcess) -> None:
        self.name = name
        self.conn = conn
        self.process = process
        self.url = f"http://127.0.0.1:{self._reply('ready')}"

    def _reply(self, kind: str) -> Any:
        if not self.conn.poll(CHILD_TIMEOUT_S):
            raise RuntimeError(f"the {self.name} process sent no {kind!r} within {CHILD_TIMEOUT_S:.0f}s")
        try:
            received, payload = self.conn.recv()
        except EOFError:
            raise RuntimeError(f"the {self.name} process exited (code {self.process.exitcode})") from None
        if received == "error":
            raise RuntimeError(f"the {self.name} process failed:\n{payload}")
        if received != kind:
            raise RuntimeError(f"the {self.name} process sent {received!r}, expected {kind!r}")
        return payload

    def start(self) -> None:
        self.conn.send("start")
        self._reply("started")

    def stop(self) -> Plain:
        self.conn.send("stop")
        result: Plain = self._reply("result")
        return result


@contextlib.contextmanager
def child_process(role: str, *args: Any) -> Iterator[Child]:
    """A child running ``role`` ("synthetic", "sidecar" or "pipe"), stopped however the block is left."""
    # spawn, not fork: the child starts clean, with no copy of this process's loop, threads or sessions.
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=_child_main, args=(child, role, args), name=f"bench-{role}", daemon=True)
    process.start()
    child.close()
    try:
        yield Child(role, parent, process)
    finally:
        parent.close()  # a child still waiting for a message sees EOF and stops
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(5)
        if process.is_alive():
            process.kill()
            process.join()


# --- the synthetic server child -------------------------------------------------------------------------------


def _note_emissions(emitted: dict[int, list[float]]) -> None:
    """Note, per response, when the server started it and wrote each chunk (wraps aiohttp's methods, child only).

    The synthetic server takes its ``start`` just before ``prepare`` and writes every SSE event with one
    ``write`` when its timer fires, which is up to a millisecond late (epoll's timeout resolution): a chunk's
    offset at the server, write - prepare, carries that lateness, and subtracting it from the offset at the client
    takes it out of the comparison of two runs. Costs a clock read a write, in every run alike.
    """
    pending: dict[int, list[float]] = {}  # by id(response), until the first chunk names the request index
    prepare, write, write_eof = web.StreamResponse.prepare, web.StreamResponse.write, web.StreamResponse.write_eof

    async def noted_prepare(self: web.StreamResponse, request: web.BaseRequest) -> Any:
        pending[id(self)] = [time.perf_counter()]
        return await prepare(self, request)

    async def noted_write(self: web.StreamResponse, data: bytes | bytearray | memoryview) -> None:
        times = pending.get(id(self))
        if times is not None:
            times.append(time.perf_counter())
            if len(times) == 2 and (match := CHUNK_ID.search(bytes(data))) is not None:
                emitted[int(match.group(1))] = times
        await write(self, data)

    async def noted_write_eof(self: web.StreamResponse, data: bytes = b"") -> None:
        pending.pop(id(self), None)
        await write_eof(self, data)

    web.StreamResponse.prepare = noted_prepare  # type: ignore[method-assign]
    web.StreamResponse.write = noted_write  # type: ignore[method-assign]
    web.StreamResponse.write_eof = noted_write_eof  # type: ignore[method-assign]


async def _run_synthetic(conn: Connection, config: SyntheticConfig) -> None:
    emitted: dict[int, list[float]] = {}
    _note_emissions(emitted)
    runner, port = await synthetic.serve(config, "127.0.0.1", 0)
    stats: synthetic.ServerStats = runner.app["stats"]
    try:
        _, _, cpu, _ = await _measured(
            conn, port, lambda: stats.started > stats.completed + stats.disconnected, lambda: {}, harness=True
        )
    finally:
        await runner.cleanup()
    conn.send(("result", {"cpu_seconds": cpu, "emitted": emitted}))


# --- the sidecar child ----------------------------------------------------------------------------------------


@dataclass
class _Relayed:
    """What the sidecar wrote to its clients. SidecarStats has no such counter; see _count_relayed."""

    writes: int = 0
    bytes: int = 0
    events: int = 0


def _count_relayed(relayed: _Relayed) -> None:
    """Count every body piece the sidecar relays to its clients (wraps its method, in the sidecar child only).

    The sidecar relays a body with ``Hop.response_body``, one call per piece the upstream's parser hands over.
    The synthetic server writes each SSE event in one piece, so counting "\\n\\n" per piece counts events exactly (a
    split event would show as a failed check, not as a wrong figure). The wrapper's cost, well under a
    microsecond a piece, is inside the CPU figure.
    """
    from tokenlat.sidecar import hop as module

    hop = getattr(module, "Hop", None)
    if hop is None or not hasattr(hop, "response_body"):
        raise RuntimeError("tokenlat.sidecar.hop.Hop.response_body is gone: update the bench's relay counter")
    original = hop.response_body

    def counted(self: Any, data: bytes, arrived: float) -> None:
        relayed.writes += 1
        relayed.bytes += len(data)
        relayed.events += data.count(b"\n\n")
        original(self, data, arrived)

    hop.response_body = counted


def _histogram(exporter: CapturingExporter, name: str) -> Plain:
    """The exported exponential histogram ``name`` as plain data, its data points (attribute sets) merged."""
    metric = exporter.metric(name)
    counts: dict[int, int] = {}
    plain: Plain = {"scale": SCALE, "zero_count": 0, "count": 0, "sum": 0.0}
    for dp in metric.data.data_points if metric is not None else ():
        assert isinstance(dp, ExponentialHistogramDataPoint), dp
        plain["scale"] = dp.scale
        plain["zero_count"] += dp.zero_count
        plain["count"] += dp.count
        plain["sum"] += dp.sum
        for i, n in enumerate(dp.positive.bucket_counts):
            counts[dp.positive.offset + i] = counts.get(dp.positive.offset + i, 0) + n
    return {**plain, **_buckets(counts)}


def _buckets(counts: dict[int, int]) -> Plain:
    used = [i for i, n in counts.items() if n]
    low = min(used, default=0)
    return {"offset": low, "bucket_counts": [counts.get(i, 0) for i in range(low, max(used, default=-1) + 1)]}


def _histogram_delta(after: Plain, before: Plain) -> Plain:
    """``after`` less ``before``: exports are cumulative, and ``before`` holds the warm-up streams."""
    counts = {after["offset"] + i: n for i, n in enumerate(after["bucket_counts"])}
    for i, n in enumerate(before["bucket_counts"]):
        counts[before["offset"] + i] = counts.get(before["offset"] + i, 0) - n
    return {
        "scale": after["scale"],
        "zero_count": after["zero_count"] - before["zero_count"],
        "count": after["count"] - before["count"],
        "sum": after["sum"] - before["sum"],
        **_buckets(counts),
    }


async def _run_sidecar(conn: Connection, upstream: str, scale: int, measure: bool, profile: str | None) -> None:
    exporter = CapturingExporter()
    # Never exported on a timer (an export mid-run is CPU that production spreads over a minute): the snapshots
    # export on force_flush, outside the measurement. environ={}: nothing from the caller's environment leaks in.
    telemetry: Telemetry = configure(
        metric_exporter=exporter,
        histogram="exponential",
        exponential_scale=scale,
        export_interval_millis=NEVER_MS,
        environ={},
    )
    relayed = _Relayed()
    _count_relayed(relayed)
    sidecar = Sidecar(upstream, telemetry.metrics, measure=measure)  # measure=False: the relay-only control
    stats = sidecar.stats

    def snapshot() -> Plain:
        telemetry.meter_provider.force_flush()
        return {
            "stats": asdict(stats),
            "relayed": asdict(relayed),
            "ttft": _histogram(exporter, semconv.TIME_TO_FIRST_TOKEN),
            "itl": _histogram(exporter, semconv.INTER_TOKEN_LATENCY),
        }

    port = await sidecar.start("127.0.0.1", 0)
    try:
        before, after, cpu, pauses = await _measured(
            conn, port, lambda: stats.in_flight > 0, snapshot, harness=False, profile=profile
        )
    finally:
        await sidecar.drain(5.0)
        await sidecar.close()
        telemetry.shutdown()
    result = {
        "cpu_seconds": cpu,
        "gc": pauses,
        "stats": {key: after["stats"][key] - before["stats"][key] for key in after["stats"]},
        "relayed": {key: after["relayed"][key] - before["relayed"][key] for key in after["relayed"]},
        "ttft": _histogram_delta(after["ttft"], before["ttft"]),
        "itl": _histogram_delta(after["itl"], before["itl"]),
    }
    conn.send(("result", result))


# --- the byte pipe child -------------------------------------------------------------------------------------


async def _run_pipe(conn: Connection, upstream: str) -> None:
    url = URL(upstream)
    assert url.host is not None and url.port is not None, upstream
    server, port = await serve_byte_pipe(url.host, url.port)
    try:
        # Nothing to wait for at "stop": the client has read every byte, so the pipe has written it.
        _, _, cpu, pauses = await _measured(conn, port, lambda: False, lambda: {}, harness=False)
    finally:
        server.close()
    conn.send(("result", {"cpu_seconds": cpu, "gc": pauses}))


# What a child runs, by role (looked up in the child, after all are defined).
_ROLES: dict[str, Callable[..., Awaitable[None]]] = {
    "synthetic": _run_synthetic,
    "sidecar": _run_sidecar,
    "pipe": _run_pipe,
}


# --- the client -----------------------------------------------------------------------------------------------


@dataclass
class Stream:
    """One response as the client received it, timed with perf_counter (CLOCK_MONOTONIC, as the children's)."""

    start: float  # just before the request was sent
    status: int = 0
    events: list[str] = field(default_factory=list)  # SSE data payloads, in order
    arrivals: list[float] = field(default_factory=list)  # per event: when the read that completed it returned
    body: bytes = b""


async def _stream(session: aiohttp.ClientSession, url: str, body: bytes) -> Stream:
    stream = Stream(start=time.perf_counter())
    async with session.post(url + CHAT_PATH, data=body, headers=HEADERS) as response:
        stream.status = response.status
        received = bytearray()
        read_at = stream.start

        async def timed_reads() -> AsyncIterator[bytes]:
            # Each read is timed as it returns; iter_sse_data then yields the events it completed, all of which
            # arrived with that read. Parsing the JSON waits until the run is over.
            nonlocal read_at
            async for chunk in response.content.iter_any():
                read_at = time.perf_counter()
                received.extend(chunk)
                yield chunk

        async for data in iter_sse_data(timed_reads()):
            stream.events.append(data)
            stream.arrivals.append(read_at)
        stream.body = bytes(received)
    return stream


def machine_busy() -> float | None:
    """CPU seconds spent so far by every process on the machine (/proc/stat), None where there is no /proc/stat.

    Compared with this bench's own processes over a run, it shows whether something else competed for the CPUs:
    on a shared machine that is the first suspect for a bad tail.
    """
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    # user nice system idle iowait irq softirq steal ...: everything but idle and iowait is busy.
    ticks = [int(x) for x in fields[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


@dataclass
class Window:
    """The measured part of one run, as the client saw it."""

    streams: list[Stream]
    failures: list[str]
    seconds: float = 0.0  # wall time
    client_cpu: float = 0.0  # this process's CPU time
    machine_cpu: float | None = None  # every process's, from /proc/stat


async def _drive(
    url: str, requests: int, concurrency: int, ramp: float, before: Callable[[], None], say: Progress, label: str
) -> Window:
    """Warm up, call ``before``, then ``requests`` streams with at most ``concurrency`` in flight.

    The streams start spread over ``ramp`` seconds (a stream's planned mean duration), as they would be in steady
    state: started all at once, a hundred requests would queue behind each other in every process, and that
    burst, paid by every chunk of the first hundred streams (a server times its tokens from its start), is not
    what a proxy adds to a stream in steady state.
    """
    streams: list[Stream] = []
    failures: list[str] = []
    # One connection per concurrent stream, kept alive and reused by the next stream: an OpenAI client's pool.
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=CLIENT_TIMEOUT) as session:
        # Warm-up: every connection of both hops opened (client-sidecar, sidecar-server) and every code path run
        # once, so that the measured streams do not pay set-up costs a long-running proxy pays once.
        warm = await asyncio.gather(
            *(_stream(session, url, WARM_BODY) for _ in range(concurrency)), return_exceptions=True
        )
        for i, outcome in enumerate(warm):
            if isinstance(outcome, BaseException) or outcome.status != 200:
                failures.append(f"warm-up {i}: {outcome if isinstance(outcome, BaseException) else outcome.status}")
        before()
        queue: asyncio.Queue[int] = asyncio.Queue()
        for n in range(requests):
            queue.put_nowait(n)
        step = max(requests // 4, 1)

        async def worker(delay: float) -> None:
            await asyncio.sleep(delay)
            while True:
                try:
                    n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    streams.append(await _stream(session, url, BODY))
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    failures.append(f"request {n}: {type(exc).__name__}: {exc}")
                done = len(streams) + len(failures)
                if done % step == 0:
                    say(f"{label}: {done}/{requests} streams")

        workers = min(concurrency, requests)
        # The client is part of the rig: no collector pauses of its own while it times arrivals (a few seconds of
        # garbage is nothing), so that they do not pass for latency added elsewhere.
        gc.collect()
        gc.disable()
        window = Window(streams, failures)
        busy, cpu, wall = machine_busy(), time.process_time(), time.perf_counter()
        try:
            await asyncio.gather(*(worker(ramp * w / workers) for w in range(workers)))
        finally:
            gc.enable()
        window.seconds, window.client_cpu = time.perf_counter() - wall, time.process_time() - cpu
        if busy is not None:
            window.machine_cpu = (machine_busy() or busy) - busy
    return window


# --- what each run observed -----------------------------------------------------------------------------------


@dataclass
class Response:
    """One complete stream, parsed."""

    index: int  # the synthetic server's request index, from the chunk id
    start: float  # client clock: request sent
    arrivals: list[float]  # client clock: per SSE event
    ttft: float
    gaps: list[float]  # between consecutive token chunks (the synthetic server sends one token a chunk)
    tokens: int
    body: bytes  # with the ``created`` timestamps blanked

    @property
    def offsets(self) -> list[float]:
        return [arrival - self.start for arrival in self.arrivals]


def parse_stream(stream: Stream) -> Response:
    """The response, or ValueError saying what is wrong with it."""
    if stream.status != 200:
        raise ValueError(f"HTTP {stream.status}")
    if not stream.events or stream.events[-1] != "[DONE]":
        raise ValueError(f"{len(stream.events)} events, not ending with [DONE]")
    chunks = [parse_openai_event(data) for data in stream.events[:-1]]
    ids = {chunk.get("id") if chunk is not None else None for chunk in chunks}
    if len(ids) != 1 or None in ids:
        raise ValueError(f"chunk ids {sorted(map(str, ids))}: expected one, and [DONE] only at the end")
    token_arrivals: list[float] = []
    usage: dict[str, Any] = {}
    for chunk, arrival in zip(chunks, stream.arrivals, strict=False):
        n = openai_chunk_tokens(chunk)
        if n > 1:
            raise ValueError(f"a chunk with {n} tokens: the synthetic server sends one a chunk")
        if n:
            token_arrivals.append(arrival)
        if chunk and chunk.get("usage"):
            usage = chunk["usage"]
    if not token_arrivals:
        raise ValueError("no tokens")
    if usage.get("completion_tokens") != len(token_arrivals):
        raise ValueError(f"usage {usage} disagrees with the {len(token_arrivals)} token chunks received")
    return Response(
        index=int(str(ids.pop()).rsplit("-", 1)[-1]),
        start=stream.start,
        arrivals=stream.arrivals,
        ttft=token_arrivals[0] - stream.start,
        gaps=[b - a for a, b in itertools.pairwise(token_arrivals)],
        tokens=len(token_arrivals),
        body=CREATED.sub(b'"created":0', stream.body),
    )


@dataclass
class Run:
    name: str
    responses: dict[int, Response]  # by request index
    failures: list[str]
    received_bytes: int  # as received, timestamps and all
    received_events: int
    server_cpu: float
    # Server clock readings per request index: [start of the response, then one per chunk written].
    emitted: dict[int, list[float]]
    window: Window
    duplicate_indexes: int = 0

    @property
    def ttfts(self) -> list[float]:
        return [r.ttft for r in self.responses.values()]

    @property
    def gaps(self) -> list[float]:
        return [g for r in self.responses.values() for g in r.gaps]

    @property
    def token_chunks(self) -> int:
        return sum(r.tokens for r in self.responses.values())

    def request_path(self, index: int) -> float:
        """Client sent the request -> the server started its response."""
        return self.emitted[index][0] - self.responses[index].start

    def path_latency(self, index: int) -> list[float]:
        """Per chunk: its offset at the client less its offset at the server (schedule and timer lateness).

        That is the request path plus the response path (server wrote the chunk -> client read it): everything a
        proxy can add, and nothing of the server's own timing.
        """
        r, emitted = self.responses[index], self.emitted[index]
        return [(a - r.start) - (w - emitted[0]) for a, w in zip(r.arrivals, emitted[1:], strict=False)]


def make_run(name: str, window: Window, server: Plain) -> Run:
    run = Run(
        name,
        {},
        list(window.failures),
        received_bytes=sum(len(s.body) for s in window.streams),
        received_events=sum(len(s.events) for s in window.streams),
        server_cpu=server["cpu_seconds"],
        emitted=server["emitted"],
        window=window,
    )
    for n, stream in enumerate(window.streams):
        try:
            response = parse_stream(stream)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            run.failures.append(f"stream {n}: {exc}")
            continue
        if response.index in run.responses:
            run.duplicate_indexes += 1
        run.responses[response.index] = response
    return run


@dataclass
class PipeReport:
    """What the byte pipe child sent back (over the measured streams only)."""

    cpu_seconds: float
    gc: Plain  # its collector pauses, as the sidecar's


@dataclass
class NginxReport:
    """The reference proxy's CPU time over the measured streams (its whole process, from /proc/PID/stat)."""

    cpu_seconds: float


@dataclass
class SidecarReport:
    """What the sidecar child sent back (over the measured streams only)."""

    cpu_seconds: float
    gc: Plain  # the sidecar's collector pauses: count, seconds and longest, per generation
    stats: dict[str, int]
    relayed: dict[str, int]
    ttft: Plain
    itl: Plain


# --- quantiles ------------------------------------------------------------------------------------------------


# Both sides use verify's statistics (tokenlat_cli.verify.statistics): the client's exact values their nearest rank
# (true_quantile), the sidecar's exponential histogram what Prometheus 3 answers for it (native_quantile).


def sidecar_quantile(h: Plain, q: float) -> float:
    """What Prometheus 3 answers for the q-quantile of a histogram the sidecar exported (a Plain data point)."""
    return native_quantile(q, dense_counts(h["offset"], h["bucket_counts"]), h["scale"], h["zero_count"])


# --- the run and its figures ----------------------------------------------------------------------------------


@dataclass
class Result:
    requests: int
    concurrency: int
    seed: int
    runs: dict[str, Run]
    sidecars: dict[str, SidecarReport]  # by run
    pipe: PipeReport | None
    checks: list[Check]
    machine: dict[str, str]
    seconds: float
    nginx: NginxReport | None = None  # None when the bench ran without the reference
    order: tuple[str, ...] = ()  # the proxied runs in the order they ran

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def sidecar(self) -> SidecarReport | None:
        """The measuring sidecar's report."""
        return self.sidecars.get(SIDECAR)

    def _indexes(self, run: str, reference: str) -> list[int]:
        a, b = self.runs[run], self.runs[reference]
        return sorted(a.responses.keys() & b.responses.keys() & a.emitted.keys() & b.emitted.keys())

    def added(self, run: str = SIDECAR, reference: str = DIRECT) -> list[float]:
        """Per (request index, chunk): path latency in ``run`` less in ``reference``, seconds, sorted."""
        a, b = self.runs[run], self.runs[reference]
        return sorted(
            x - y
            for i in self._indexes(run, reference)
            for x, y in zip(a.path_latency(i), b.path_latency(i), strict=False)
        )

    def added_request_path(self, run: str = SIDECAR, reference: str = DIRECT) -> list[float]:
        """Per request index: the request path in ``run`` less in ``reference``, sorted."""
        a, b = self.runs[run], self.runs[reference]
        return sorted(a.request_path(i) - b.request_path(i) for i in self._indexes(run, reference))

    def added_response_path(self, run: str = SIDECAR, reference: str = DIRECT) -> list[float]:
        """Per (request index, chunk): server wrote it -> client read it, in ``run`` less in ``reference``."""
        a, b = self.runs[run], self.runs[reference]
        return sorted(
            (x - a.request_path(i)) - (y - b.request_path(i))
            for i in self._indexes(run, reference)
            for x, y in zip(a.path_latency(i), b.path_latency(i), strict=False)
        )

    def added_raw(self, run: str = SIDECAR, reference: str = DIRECT) -> list[float]:
        """Per (request index, chunk): arrival offsets at the client only, the server's timer lateness left in."""
        a, b = self.runs[run].responses, self.runs[reference].responses
        return sorted(
            x - y for i in self._indexes(run, reference) for x, y in zip(a[i].offsets, b[i].offsets, strict=False)
        )

    def path_latencies(self, run: str) -> list[float]:
        r = self.runs[run]
        return sorted(x for i in sorted(r.responses.keys() & r.emitted.keys()) for x in r.path_latency(i))

    def tail(self, run: str, q: float = 0.99) -> tuple[int, list[int], list[float]]:
        """The chunks of ``run`` at or above its q-quantile of path latency: (how many, the request indexes of
        their streams, each such chunk's request path as a share of its latency).

        A stream's request path shifts every chunk of it, so a few streams whose requests waited (requests that
        arrived together) can fill the top 1% on their own: this says whether the p99 is decided by chunks or by
        streams.
        """
        r = self.runs[run]
        chunks = [(x, i) for i in sorted(r.responses.keys() & r.emitted.keys()) for x in r.path_latency(i)]
        cut = true_quantile(sorted(x for x, _ in chunks), q)
        top = [(x, i) for x, i in chunks if x >= cut]
        return len(top), sorted({i for _, i in top}), sorted(r.request_path(i) / x for x, i in top if x > 0)

    def shift(self, run: str, q: float, reference: str = DIRECT) -> float:
        """How far ``run`` moved the q-quantile of the chunks' path latency from ``reference``'s, seconds.

        The added latency the target is about: what a proxy does to the latency its clients see at p99. Unlike
        the paired differences (``added``), it is not inflated by the run-to-run jitter of single chunks: two
        runs that add nothing differ by about 0 here, but by the jitter there.
        """
        return true_quantile(self.path_latencies(run), q) - true_quantile(self.path_latencies(reference), q)

    def chunks(self) -> int:
        return self.runs[SIDECAR].received_events

    def accuracy(self) -> list[tuple[str, float, float, float]]:
        """(metric, quantile, the sidecar's value, the client's through the sidecar), seconds."""
        if self.sidecar is None:
            return []
        through = self.runs[SIDECAR]
        return [
            (metric, q, sidecar_quantile(histogram, q), true_quantile(values, q))
            for metric, histogram, values in (
                ("TTFT", self.sidecar.ttft, sorted(through.ttfts)),
                ("inter-token", self.sidecar.itl, sorted(through.gaps)),
            )
            for q in QUANTILES
        ]

    def latency_target(self) -> tuple[str, bool, str]:
        # Met only with the rig's own noise on top: the p99 of two runs that add nothing differs by that much.
        p99, noise = self.shift(SIDECAR, 0.99) * 1000, abs(self.shift(DIRECT_AGAIN, 0.99)) * 1000
        return (
            f"p99 added latency per chunk <= {TARGET_ADDED_P99_MS:g} ms at {self.concurrency} concurrent streams",
            p99 + noise <= TARGET_ADDED_P99_MS,
            f"p99 through the sidecar - p99 direct: {p99:.3f} ms, give or take the rig's {noise:.3f} ms",
        )

    def targets(self) -> list[tuple[str, bool, str]]:
        return [self.latency_target(), accuracy_target(self.accuracy())]

    def cpu_per_chunk(self, run: str) -> float:
        """CPU seconds per relayed chunk of the proxy process of ``run`` (its whole process); NaN without one."""
        if run in self.sidecars:
            seconds = self.sidecars[run].cpu_seconds
        elif run == NGINX and self.nginx is not None:
            seconds = self.nginx.cpu_seconds
        elif run == BYTE_PIPE and self.pipe is not None:
            seconds = self.pipe.cpu_seconds
        else:
            return math.nan
        return seconds / self.chunks()

    def against_nginx(self) -> tuple[float, float] | None:
        """This round's sidecar against nginx: (CPU per chunk, x nginx's; added p99 less nginx's, seconds); None
        without the reference."""
        if self.nginx is None or NGINX not in self.runs:
            return None
        nginx_cpu = self.cpu_per_chunk(NGINX)
        ratio = self.cpu_per_chunk(SIDECAR) / nginx_cpu if nginx_cpu > 0 else math.inf
        return ratio, self.shift(SIDECAR, 0.99) - self.shift(NGINX, 0.99)

    def reference_targets(self) -> list[tuple[str, bool, str]]:
        """The sidecar against nginx, the reference, in this round (none without it)."""
        return reference_targets([self])


def reference_targets(results: Sequence[Result]) -> list[tuple[str, bool, str]]:
    """The sidecar against nginx, the reference (none without it): its CPU per chunk and its added p99 latency,
    each the median over the rounds of that round's comparison. Within a round, the two proxies ran minutes apart
    at most, with the same direct run as their baseline; a stall of the machine in one run moves one round's
    comparison, not the median's."""
    rounds = [pair for pair in (r.against_nginx() for r in results) if pair is not None]
    if not rounds:
        return []
    ratio = statistics.median(cpu for cpu, _ in rounds)
    over = statistics.median(p99 for _, p99 in rounds) * 1000
    of = f"median of {len(rounds)} round(s)" if len(rounds) > 1 else "one round"
    return [
        (
            f"sidecar CPU per chunk <= {TARGET_CPU_X_NGINX:g}x nginx's",
            ratio <= TARGET_CPU_X_NGINX,
            f"{of}: {ratio:.2f}x nginx's CPU per chunk",
        ),
        (
            f"sidecar added p99 latency <= nginx's + {TARGET_P99_OVER_NGINX_MS:g} ms",
            over <= TARGET_P99_OVER_NGINX_MS,
            f"{of}: the sidecar's added p99 {over:+.3f} ms over nginx's",
        ),
    ]


def accuracy_target(accuracy: Sequence[tuple[str, float, float, float]]) -> tuple[str, bool, str]:
    """Met when every (metric, quantile, sidecar, client) row is within the target; the detail names the worst."""
    errors = [(f"{m} p{q * 100:g}", (s - c) / c) for m, q, s, c in accuracy]
    worst_name, worst = max(errors, key=lambda e: abs(e[1]), default=("none", math.nan))
    return (
        f"sidecar TTFT and inter-token p50/p90/p99 within {TARGET_RELATIVE_ERROR:.0%} of the client's",
        bool(errors) and all(abs(e) <= TARGET_RELATIVE_ERROR for _, e in errors),
        f"largest error: {worst_name} {worst:+.2%}",
    )


@dataclass
class Rounds:
    """The whole comparison repeated: one run's p99 is itself noisy (a few stalls of the machine decide it), so the
    target is judged on the median round, and every round's figures are shown."""

    results: list[Result]

    def _bound(self, result: Result) -> float:
        """A round's p99 added latency with the rig's noise on top, seconds."""
        return result.shift(SIDECAR, 0.99) + abs(result.shift(DIRECT_AGAIN, 0.99))

    @property
    def median(self) -> Result:
        """The round whose p99 added latency (noise on top) is the median (the lower one of an even count)."""
        ranked = sorted(self.results, key=self._bound)
        return ranked[(len(ranked) - 1) // 2]

    @property
    def checks(self) -> list[Check]:
        """Every round's checks, a line per name: passed if passed in every round."""
        return merge_checks([result.checks for result in self.results])

    @property
    def passed(self) -> bool:
        return all(c.ok for c in self.checks)

    def targets(self) -> list[tuple[str, bool, str]]:
        """The latency target on the median round; the accuracy target on every round's figures; the targets
        against nginx on the median of the rounds' comparisons."""
        latency = self.median.latency_target()
        if len(self.results) > 1:
            by_round = ", ".join(f"{self._bound(r) * 1000:.3f}" for r in self.results)
            latency = (
                latency[0],
                latency[1],
                f"median of {len(self.results)} rounds: {latency[2]}; with the noise on top, by round: {by_round} ms",
            )
        return [
            latency,
            accuracy_target([row for r in self.results for row in r.accuracy()]),
            *reference_targets(self.results),
        ]


def check_runs(
    runs: dict[str, Run], sidecars: dict[str, SidecarReport], pipe: PipeReport | None, requests: int, warm: int
) -> list[Check]:
    """What the figures rely on: a failure here means they would be wrong, not merely slow."""
    checks = []
    expected = set(range(warm, warm + requests))
    for run in runs.values():
        ok = not run.failures and not run.duplicate_indexes and set(run.responses) == expected
        detail = f"{len(run.responses):,} of {requests:,} streams complete, indexes {warm}-{warm + requests - 1}"
        if run.failures:
            detail += f"; {len(run.failures)} failed, first: {run.failures[0]}"
        if run.duplicate_indexes:
            detail += f"; {run.duplicate_indexes} request indexes served twice"
        checks.append(Check(f"every request succeeded ({run.name})", ok, detail))
    direct = runs[DIRECT].responses
    for name in (name for name in PROXIED_RUNS if name in runs):
        through = runs[name].responses
        differing = [i for i in sorted(direct.keys() & through.keys()) if direct[i].body != through[i].body]
        checks.append(
            Check(
                f"bytes {name} == bytes direct, per request index (created timestamps blanked)",
                not differing and direct.keys() == through.keys(),
                f"{len(direct.keys() & through.keys()):,} compared"
                + (f"; first difference at index {differing[0]}" if differing else ""),
            )
        )
    mismatched = [
        f"{run.name} {i}"
        for run in runs.values()
        for i, r in run.responses.items()
        if len(run.emitted.get(i, ())) != len(r.arrivals) + 1
    ]
    checks.append(
        Check(
            "the server wrote each stream's chunks one SSE event a write",
            not mismatched,
            "writes == events received, per stream" + (f"; not for {mismatched[0]}" if mismatched else ""),
        )
    )
    # The latencies subtract readings of different processes' clocks: nonsense unless the clock is shared.
    negative = [
        f"{run.name} {i}"
        for run in runs.values()
        for i in run.responses.keys() & run.emitted.keys()
        if run.request_path(i) <= 0
        or min(a - w for a, w in zip(run.responses[i].arrivals, run.emitted[i][1:], strict=False)) <= 0
    ]
    checks.append(
        Check(
            "one clock for all processes: every request reached the server after it was sent, every chunk the"
            " client after the server wrote it",
            not negative,
            time.get_clock_info("perf_counter").implementation + (f"; not for {negative[0]}" if negative else ""),
        )
    )
    trouble_keys = ("upstream_errors", "upstream_resets", "client_disconnects", "malformed_events", "oversized_lines")
    for name, measuring in SIDECAR_RUNS.items():
        run, report = runs[name], sidecars.get(name)
        if report is None:
            checks.append(Check(f"the sidecar reported back ({name})", False, "no report"))
            continue
        relayed, stats = report.relayed, report.stats
        checks.append(
            Check(
                f"bytes and chunks (SSE events) relayed by the sidecar == received by the client ({name})",
                relayed["bytes"] == run.received_bytes and relayed["events"] == run.received_events,
                f"{relayed['bytes']:,} vs {run.received_bytes:,} bytes,"
                f" {relayed['events']:,} vs {run.received_events:,} events",
            )
        )
        troubles = {k: stats[k] for k in trouble_keys if stats[k]}
        checks.append(
            Check(
                f"the sidecar saw every stream, without errors ({name})",
                stats["streams"] == requests and stats["requests"] == requests and not troubles,
                f"{stats['streams']:,} streams of {stats['requests']:,} requests"
                + (f"; {troubles}" if troubles else ", no errors"),
            )
        )
        if not measuring:
            checks.append(
                Check(
                    f"the sidecar recorded nothing ({name})",
                    report.ttft["count"] == 0 and report.itl["count"] == 0,
                    f"{report.ttft['count']:,} TTFT and {report.itl['count']:,} inter-token observations",
                )
            )
    checks.append(Check(f"the byte pipe reported back ({BYTE_PIPE})", pipe is not None, "CPU time and GC pauses"))
    sidecar, run = sidecars.get(SIDECAR), runs[SIDECAR]
    if sidecar is None:
        return checks
    checks.append(
        Check(
            f"sidecar {semconv.TIME_TO_FIRST_TOKEN} count == streams",
            sidecar.ttft["count"] == len(run.responses),
            f"{sidecar.ttft['count']:,} exported, {len(run.responses):,} streams",
        )
    )
    client_gaps = len(run.gaps)
    checks.append(
        Check(
            f"sidecar {semconv.INTER_TOKEN_LATENCY} count == gaps the client observed",
            sidecar.itl["count"] == client_gaps,
            f"{sidecar.itl['count']:,} exported, {client_gaps:,} observed",
        )
    )
    return checks


def run(
    requests: int = DEFAULT_REQUESTS,
    concurrency: int = DEFAULT_CONCURRENCY,
    seed: int = DEFAULT_SEED,
    progress: Progress | None = None,
    profile: str | None = None,
    reference: str = "nginx",
    rotation: int = 0,
) -> Result:
    """One round: every run of ``RUNS`` (without NGINX when ``reference`` is "none"), direct first and last, the
    proxied runs between them rotated left by ``rotation``.

    Where a run comes in the round may move its figures (docs/benchmarks.md: two runs in different orders put the
    sidecar's p99 over nginx's 1 ms apart, within the noise or not), and a fixed order would put any such effect on
    the same run every time. So rounds rotate the order, and over as many rounds as there are proxied runs each
    takes every place once.
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if reference == "nginx" and find_nginx() is None:
        raise RuntimeError(NGINX_MISSING)  # before minutes of other runs
    say = progress or (lambda _: None)
    began = time.monotonic()
    config = SyntheticConfig(
        seed=seed,
        ttft=Distribution.parse(TTFT),
        inter_token=Distribution.parse(INTER_TOKEN),
        output_tokens=OUTPUT_TOKENS,
    )
    # The measured streams are indexes concurrency .. concurrency + requests - 1 (the warm-up takes the first ones).
    ramp = statistics.fmean(
        synthetic.plan_request(config, i).total_seconds for i in range(concurrency, concurrency + requests)
    )
    runs: dict[str, Run] = {}
    reports: dict[str, SidecarReport] = {}
    pipe_report: PipeReport | None = None
    nginx_report: NginxReport | None = None
    proxied = [name for name in PROXIED_RUNS if name != NGINX or reference == "nginx"]
    shift = rotation % len(proxied)
    order = (*proxied[shift:], *proxied[:shift])
    for name in (DIRECT, *order, DIRECT_AGAIN):
        # A fresh server per run: request indexes start at 0 again, so index i has the same plan in every run.
        with child_process("synthetic", config) as server:
            proxy: tuple[Any, ...]  # the child's role and arguments
            if name in SIDECAR_RUNS:
                measure = SIDECAR_RUNS[name]
                proxy = ("sidecar", server.url, SCALE, measure, profile if measure else None)
            elif name == BYTE_PIPE:
                proxy = ("pipe", server.url)
            elif name == NGINX:
                with nginx_proxy(server.url) as nginx:
                    say(f"{name}: nginx {nginx.url}, upstream {server.url}")

                    def start_both(nginx: Any = nginx, server: Child = server) -> None:
                        server.start()
                        nginx.start()

                    window = asyncio.run(_drive(nginx.url, requests, concurrency, ramp, start_both, say, name))
                    nginx_report = NginxReport(**nginx.stop())
                runs[name] = make_run(name, window, server.stop())
                continue
            else:
                say(f"{name}: upstream {server.url}")
                window = asyncio.run(_drive(server.url, requests, concurrency, ramp, server.start, say, name))
                runs[name] = make_run(name, window, server.stop())
                continue
            with child_process(*proxy) as child:
                say(f"{name}: {child.name} {child.url}, upstream {server.url}")

                def before(child: Child = child, server: Child = server) -> None:
                    server.start()
                    child.start()

                window = asyncio.run(_drive(child.url, requests, concurrency, ramp, before, say, name))
                reported = child.stop()
            if name == BYTE_PIPE:
                pipe_report = PipeReport(**reported)
            else:
                reports[name] = SidecarReport(**reported)
            runs[name] = make_run(name, window, server.stop())
    runs = {name: runs[name] for name in RUNS if name in runs}  # reported in one order, whichever they ran in
    checks = check_runs(runs, reports, pipe_report, requests, warm=concurrency)
    if reference == "nginx":
        cpu = nginx_report.cpu_seconds if nginx_report is not None else math.nan
        checks.append(Check(f"nginx's CPU time was read ({NGINX})", cpu > 0, f"{cpu:.3f} s from /proc/PID/stat"))
    described = {
        **machine(),
        "aiohttp": importlib.metadata.version("aiohttp"),
        "httptools": importlib.metadata.version("httptools"),
        "sidecar event loop": loops.resolve("auto"),
    }
    described.pop("prometheus-client", None)  # not involved here
    if nginx_report is not None:
        described["nginx"] = _nginx_version()
    seconds = time.monotonic() - began
    return Result(
        requests, concurrency, seed, runs, reports, pipe_report, checks, described, seconds, nginx_report, order
    )


def _nginx_version() -> str:
    """nginx's version, as ``nginx -v`` prints it ("nginx version: nginx/1.22.1", on stderr)."""
    binary = find_nginx()
    if binary is None:
        return "?"
    printed = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stderr.strip()
    return printed.rsplit("/", 1)[-1] or "?"


# --- reporting ------------------------------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:,.3f}"


def _p(values: Sequence[float], q: float) -> str:
    return _ms(true_quantile(values, q))


ROUNDS_HEADERS = (
    "round",
    "order of the proxied runs",
    "sidecar added p50 ms",
    "sidecar added p99 ms",
    "not measuring added p99 ms",
    "nginx added p99 ms",
    "byte pipe added p99 ms",
    "rig's noise p99 ms",
    "sidecar p99 - nginx's ms",
    "sidecar CPU x nginx's",
)
# Short names of the proxied runs, for the order column of the rounds table.
SHORT_NAMES = {SIDECAR: "sidecar", RELAY_ONLY: "not measuring", NGINX: "nginx", BYTE_PIPE: "pipe"}
CPU_HEADERS = ("process CPU time", "seconds", "us per chunk", "ms per stream")
REFERENCE_HEADERS = (
    "against nginx",
    "proxy CPU us per chunk",
    "x nginx's CPU",
    "added p50 ms",
    "added p99 ms",
    "added p99 - nginx's ms",
)
SHIFT_HEADERS = ("latency per chunk", "p50 ms", "p99 ms", "added p50 ms", "added p99 ms")
PAIRED_HEADERS = ("paired per chunk", "samples", "p50 ms", "p99 ms", "mean ms", "max ms")
TAIL_HEADERS = (
    "chunks at or above their run's p99",
    "chunks",
    "streams",
    "their streams' request path p50 ms",
    "every stream's request path p50 ms",
    "request path's share of their latency p50",
)
CLIENT_HEADERS = ("client observed", *(f"{m} p{q * 100:g} ms" for m in ("TTFT", "ITL") for q in QUANTILES))
ACCURACY_HEADERS = ("metric", "quantile", "sidecar ms", "client ms (through the sidecar)", "relative error")


def cpu_rows(result: Result) -> list[tuple[str, ...]]:
    chunks, streams = result.chunks(), result.requests
    rows = []
    measuring, relaying = result.sidecars.get(SIDECAR), result.sidecars.get(RELAY_ONLY)

    def row(label: str, seconds: float) -> tuple[str, ...]:
        return (label, f"{seconds:,.3f}", f"{seconds / chunks * 1e6:,.1f}", f"{seconds / streams * 1e3:,.3f}")

    if measuring is not None:
        rows.append(row("sidecar (measuring)", measuring.cpu_seconds))
    if relaying is not None:
        rows.append(row("sidecar not measuring (relaying only)", relaying.cpu_seconds))
    if measuring is not None and relaying is not None:
        rows.append(row("difference: what measuring costs", measuring.cpu_seconds - relaying.cpu_seconds))
    if result.nginx is not None:
        rows.append(row("nginx, the reference (relaying only)", result.nginx.cpu_seconds))
    if result.pipe is not None:
        rows.append(row("byte pipe (no HTTP), for scale", result.pipe.cpu_seconds))
    rows.append(row("synthetic server, for scale (producing the chunks)", result.runs[SIDECAR].server_cpu))
    return rows


def reference_rows(result: Result) -> list[tuple[str, ...]]:
    """Direct, nginx and the sidecar both ways: the proxy's CPU per chunk and the latency it adds, against nginx's."""
    if NGINX not in result.runs:
        return []
    nginx_cpu, nginx_p99 = result.cpu_per_chunk(NGINX), result.shift(NGINX, 0.99)
    rows = [(DIRECT, "-", "-", "-", "-", "-")]
    for name in (NGINX, SIDECAR, RELAY_ONLY):
        cpu = result.cpu_per_chunk(name)
        rows.append(
            (
                name,
                f"{cpu * 1e6:,.1f}",
                f"{cpu / nginx_cpu:.2f}" if nginx_cpu > 0 else "n/a",
                f"{result.shift(name, 0.5) * 1000:+,.3f}",
                f"{result.shift(name, 0.99) * 1000:+,.3f}",
                f"{(result.shift(name, 0.99) - nginx_p99) * 1000:+,.3f}",
            )
        )
    return rows


def rounds_rows(rounds: Rounds) -> list[tuple[str, ...]]:
    """Per round: the added latency of each proxy (quantile shifts), and the rig's noise by the same measure."""
    median = rounds.median

    def ms(result: Result, run: str, q: float) -> str:
        return f"{result.shift(run, q) * 1000:+,.3f}" if run in result.runs else "-"

    def against_nginx(result: Result) -> tuple[str, str]:
        pair = result.against_nginx()
        return ("-", "-") if pair is None else (f"{pair[1] * 1000:+,.3f}", f"{pair[0]:.2f}")

    return [
        (
            f"{i}" + (" (median)" if result is median else ""),
            ", ".join(SHORT_NAMES[name] for name in result.order),
            ms(result, SIDECAR, 0.5),
            ms(result, SIDECAR, 0.99),
            ms(result, RELAY_ONLY, 0.99),
            ms(result, NGINX, 0.99),
            ms(result, BYTE_PIPE, 0.99),
            ms(result, DIRECT_AGAIN, 0.99),
            *against_nginx(result),
        )
        for i, result in enumerate(rounds.results, 1)
    ]


def shift_rows(result: Result) -> list[tuple[str, ...]]:
    """Per run: the quantiles of its chunks' path latency, and how far they moved from direct's."""
    rows = []
    for name in result.runs:
        label = f"{name} (the rig's noise)" if name == DIRECT_AGAIN else name
        values = result.path_latencies(name)
        shifts = ("-", "-") if name == DIRECT else tuple(f"{result.shift(name, q) * 1000:+,.3f}" for q in (0.5, 0.99))
        rows.append((label, _p(values, 0.5), _p(values, 0.99), *shifts))
    return rows


def paired_rows(result: Result) -> list[tuple[str, ...]]:
    """Per proxy, each chunk less the same chunk direct, and that split into the request path (per stream: it
    shifts every chunk of the stream) and the response path (per chunk): where a proxy's added latency comes in."""
    sections: list[tuple[str, list[float]]] = []
    for name in (name for name in PROXIED_RUNS if name in result.runs):
        short = SHORT_NAMES[name]
        sections += [
            (f"{name} - direct", result.added(name)),
            (f"{short}: of which request path, per stream", result.added_request_path(name)),
            (f"{short}: of which response path, per chunk", result.added_response_path(name)),
        ]
    sections.append(("direct again - direct (the rig's noise)", result.added(DIRECT_AGAIN)))
    rows = []
    for label, values in sections:
        mean = statistics.fmean(values) if values else math.nan
        rows.append(
            (
                label,
                f"{len(values):,}",
                _p(values, 0.5),
                _p(values, 0.99),
                _ms(mean),
                _ms(values[-1] if values else mean),
            )
        )
    return rows


def tail_rows(result: Result) -> list[tuple[str, ...]]:
    """Per run: which streams its p99 chunks belong to, and how much of their latency their request path is."""
    rows = []
    for name, run in result.runs.items():
        count, streams, shares = result.tail(name)
        every = sorted(run.request_path(i) for i in run.responses.keys() & run.emitted.keys())
        theirs = sorted(run.request_path(i) for i in streams)
        share = true_quantile(shares, 0.5)
        rows.append((name, f"{count:,}", f"{len(streams):,}", _p(theirs, 0.5), _p(every, 0.5), f"{share:.0%}"))
    return rows


def client_rows(result: Result) -> list[tuple[str, ...]]:
    rows = []
    for name in result.runs:
        ttfts, gaps = sorted(result.runs[name].ttfts), sorted(result.runs[name].gaps)
        rows.append((name, *(_p(ttfts, q) for q in QUANTILES), *(_p(gaps, q) for q in QUANTILES)))
    return rows


def accuracy_rows(result: Result) -> list[tuple[str, ...]]:
    return [
        (metric, f"p{q * 100:g}", _ms(sidecar), _ms(client), f"{(sidecar - client) / client:+.2%}")
        for metric, q, sidecar, client in result.accuracy()
    ]


def load(result: Result) -> str:
    """CPU use while measuring, per run, in cores: the bench's processes, and everything else on the machine."""
    parts = []
    for name, run in result.runs.items():
        wall = run.window.seconds or math.nan
        ours = run.window.client_cpu + run.server_cpu
        detail = f"client {run.window.client_cpu / wall:.2f}, server {run.server_cpu / wall:.2f}"
        if name in result.sidecars:
            ours += result.sidecars[name].cpu_seconds
            detail += f", sidecar {result.sidecars[name].cpu_seconds / wall:.2f}"
        elif name == BYTE_PIPE and result.pipe is not None:
            ours += result.pipe.cpu_seconds
            detail += f", pipe {result.pipe.cpu_seconds / wall:.2f}"
        elif name == NGINX and result.nginx is not None:
            ours += result.nginx.cpu_seconds
            detail += f", nginx {result.nginx.cpu_seconds / wall:.2f}"
        others = "n/a" if run.window.machine_cpu is None else f"{max(run.window.machine_cpu - ours, 0) / wall:.2f}"
        parts.append(f"{name} {detail}, other processes {others}")
    return (
        f"CPU in use while measuring, in cores of {result.machine.get('nproc', '?')}: " + "; ".join(parts) + ". Other"
        " processes competing for the cores delay chunks in any run, and most in the runs through a proxy, which"
        " have three processes busy on the cores rather than two."
    )


def notes(result: Result) -> list[str]:
    raw, raw_noise = result.added_raw(), result.added_raw(DIRECT_AGAIN)
    out = [
        "Latency per chunk: its offset at the client less its offset at the server (request path + server write to"
        " client read). 'Added': a quantile through a proxy less the same quantile direct. 'Paired': each chunk"
        " (request index, position) less the same chunk direct, which adds the jitter of single chunks in two runs"
        " (see the rig's noise row); quantiles of the parts do not add up.",
        "Chunks at or above their run's p99: the top 1% of a run's chunks, how many streams they come from, and"
        " those streams' request path (client sent -> server started the response) against every stream's. A"
        " stream's request path shifts all of its chunks, so when few streams hold the top 1% and their request"
        " path is most of their latency, the p99 is decided by requests that waited, not by the relaying of"
        " chunks.",
        "Compared at the client only (arrival offsets, the synthetic server's timer lateness left in), the sidecar"
        f" would seem to add p50 {_p(raw, 0.5)} / p99 {_p(raw, 0.99)} ms, against a noise of p50 {_p(raw_noise, 0.5)}"
        f" / p99 {_p(raw_noise, 0.99)} ms.",
    ]
    if result.sidecar is not None:
        s = result.sidecar
        out.append(
            f"The sidecar relayed the {result.chunks():,} chunks in {s.relayed['writes']:,} writes to its clients"
            f" ({result.chunks() / max(s.relayed['writes'], 1):.2f} chunks a write: a write relays whatever one read"
            " from the server returned)."
        )
        pauses = s.gc
        out.append(
            "Garbage collection in the sidecar while measuring (its collector on, as in production): "
            + ", ".join(
                f"generation {g}: {pauses['count'][g]:,} pauses, {pauses['seconds'][g] * 1e3:,.1f} ms in all,"
                f" longest {pauses['longest'][g] * 1e3:,.1f} ms"
                for g in range(3)
            )
            + ". The bench's own processes (client, synthetic server) collect nothing while measuring."
        )
    out.append(load(result))
    out.append(
        "A chunk is one SSE event: one per token"
        f" ({result.runs[SIDECAR].token_chunks:,} in all), then per stream the finish chunk, the usage chunk and"
        " [DONE]."
    )
    out.append(
        f"Sidecar quantiles: what Prometheus 3 answers (histogram_quantile) for its exported exponential histogram"
        f" (scale {SCALE}), inside the bucket holding the rank (within 0.27% of any value in it). Client quantiles:"
        " the nearest rank of the exact values."
    )
    return out


def _round_of(rounds: Rounds) -> str:
    median, count = rounds.median, len(rounds.results)
    if count == 1:
        return ""
    return f"round {rounds.results.index(median) + 1} of {count}, the median round by p99 added latency"


def _runs(result: Result) -> str:
    proxied = [name for name in result.runs if name in PROXIED_RUNS]
    return f"runs: {DIRECT}, then {', '.join(proxied)} (in an order rotated each round), then {DIRECT_AGAIN}"


def report(rounds: Rounds) -> str:
    median, count = rounds.median, len(rounds.results)
    lines = [
        f"{count} round(s) of {median.requests:,} streams per run, {median.concurrency} concurrent; {_runs(median)};"
        f" seed {median.seed}, {sum(r.seconds for r in rounds.results):.0f} s in all",
        "",
    ]
    if count > 1:
        lines += [text_table(ROUNDS_HEADERS, rounds_rows(rounds)), "", f"In full: {_round_of(rounds)}.", ""]
    lines += [
        text_table(SHIFT_HEADERS, shift_rows(median)),
        "",
        text_table(PAIRED_HEADERS, paired_rows(median)),
        "",
        text_table(TAIL_HEADERS, tail_rows(median)),
        "",
        text_table(CPU_HEADERS, cpu_rows(median)),
        "",
        *([text_table(REFERENCE_HEADERS, reference_rows(median)), ""] if reference_rows(median) else []),
        text_table(CLIENT_HEADERS, client_rows(median)),
        "",
        text_table(ACCURACY_HEADERS, accuracy_rows(median)),
        "",
        *notes(median),
        "",
        *verdict_lines(rounds.targets(), rounds.checks),
    ]
    return "\n".join(lines)


def markdown_figures(rounds: Rounds, command: str) -> str:
    lo, hi = OUTPUT_TOKENS
    median, count = rounds.median, len(rounds.results)
    workload = (
        f"{count} round(s) of {median.requests:,} streamed chat completions per run,"
        f" {median.concurrency} at a time; {_runs(median)}; each against a fresh synthetic server: seed"
        f" {median.seed}, TTFT `{TTFT}`, inter-token `{INTER_TOKEN}`, {lo}-{hi} tokens; {median.chunks():,} chunks"
        f" per run; {sum(r.seconds for r in rounds.results):.0f} s in all."
    )
    out = markdown_preamble(command, workload, median.machine)
    if count > 1:
        out += [*markdown_table(ROUNDS_HEADERS, rounds_rows(rounds)), "", f"In full: {_round_of(rounds)}.", ""]
    out += [
        *markdown_table(SHIFT_HEADERS, shift_rows(median)),
        "",
        *markdown_table(PAIRED_HEADERS, paired_rows(median)),
        "",
        *markdown_table(TAIL_HEADERS, tail_rows(median)),
        "",
        *markdown_table(CPU_HEADERS, cpu_rows(median)),
        "",
        *([*markdown_table(REFERENCE_HEADERS, reference_rows(median)), ""] if reference_rows(median) else []),
        *markdown_table(CLIENT_HEADERS, client_rows(median)),
        "",
        *markdown_table(ACCURACY_HEADERS, accuracy_rows(median)),
        "",
        *(f"- {line}" for line in notes(median)),
        "",
        *markdown_verdicts(rounds.targets(), rounds.checks, "in every round"),
    ]
    return "\n".join(out)


# --- entry point ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar", description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument(
        "--requests", type=_positive(1), default=DEFAULT_REQUESTS, help=f"streams per run (default {DEFAULT_REQUESTS})"
    )
    parser.add_argument(
        "--concurrency",
        type=_positive(1),
        default=DEFAULT_CONCURRENCY,
        help=f"streams in flight (default {DEFAULT_CONCURRENCY})",
    )
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help=f"server seed (default {DEFAULT_SEED})")
    parser.add_argument(
        "--rounds",
        type=_positive(1),
        default=DEFAULT_ROUNDS,
        help=f"times to run the whole comparison; the latency target is judged on the median (default"
        f" {DEFAULT_ROUNDS})",
    )
    parser.add_argument(
        "--reference",
        choices=REFERENCES,
        default="nginx",
        help="the reference proxy run alongside, for the CPU and latency targets: nginx (Debian's, or $NGINX_BIN), or"
        " none (default nginx)",
    )
    parser.add_argument("--markdown", type=Path, metavar="PATH", help="rewrite the figures section of this file")
    parser.add_argument(
        "--profile",
        metavar="PATH",
        help="cProfile the first round's sidecar process over the measured streams into PATH (slows it: not with"
        " --markdown)",
    )
    args = parser.parse_args(argv)
    if args.profile and args.markdown:
        parser.error("--profile distorts the figures: it cannot be combined with --markdown")
    if args.reference == "nginx" and find_nginx() is None:
        print(f"sidecar: {NGINX_MISSING}", file=sys.stderr)
        return 2

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    results = []
    for i in range(args.rounds):
        if args.rounds > 1:
            progress(f"sidecar: round {i + 1} of {args.rounds}")
        profile = args.profile if i == 0 else None
        results.append(run(args.requests, args.concurrency, args.seed, progress, profile, args.reference, rotation=i))
    rounds = Rounds(results)
    print(report(rounds))
    if not rounds.passed:
        print("sidecar: correctness check FAILED; figures not written", file=sys.stderr)
        return 1
    if args.profile:
        progress(f"sidecar: profile of the sidecar process written to {args.profile}")
    if args.markdown is not None:
        command = "make bench"
        workload = (args.requests, args.concurrency, args.seed, args.rounds, args.reference)
        if workload != (DEFAULT_REQUESTS, DEFAULT_CONCURRENCY, DEFAULT_SEED, DEFAULT_ROUNDS, "nginx"):
            command = (
                f"python -m bench.sidecar --requests {args.requests} --concurrency {args.concurrency}"
                f" --seed {args.seed} --rounds {args.rounds}"
            ) + (f" --reference {args.reference}" if args.reference != "nginx" else "")
        write_markdown(args.markdown, markdown_figures(rounds, command), begin=BEGIN, end=END, heading=SECTION_HEADING)
        progress(f"sidecar: figures written to {args.markdown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
