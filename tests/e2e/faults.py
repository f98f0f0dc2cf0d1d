"""Fault-injection harness for the end-to-end fault and overload tests (tests/e2e/test_faults.py, test_overload.py).

The whole delivery path of `tokenlat verify` (Prometheus 3 with the remote-write receiver, the ocb-built Collector
with a rendered profile, the library exporting over OTLP gRPC), reused from tokenlat_cli.verify, with two pieces
added between and in front of it:

- :class:`FaultProxy`, an HTTP proxy between the Collector's remote-write exporter and Prometheus that forwards,
  refuses (its listener closed: connection refused), stalls (accepts, never answers) or rejects (HTTP 400), and
  counts the requests it receives in each mode;
- the *load app*: this module run as a program (``python -m tests.e2e.faults``), a separate process that records
  a steady stream of requests with the library and exports every second, as a service would, until it is told to
  pause (SIGUSR1), resume (SIGUSR2) or stop (SIGTERM: final flush, then exit). It writes what it has recorded to a
  JSON status file, which is the exact truth the tests compare Prometheus with.

The design records cumulative metrics, so every export carries the totals: a delivery that fails is healed by the
next one that succeeds. :meth:`FaultStack.delivered` therefore waits for Prometheus to show exactly what the app
recorded, and reports what it shows when that never happens (the loss).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import requests

from tokenlat import semconv
from tokenlat.configure import Telemetry
from tokenlat_cli.profiles import Profile, load_profile
from tokenlat_cli.render import render_collector_config
from tokenlat_cli.verify.backends import Backend, start_backend
from tokenlat_cli.verify.certs import make_certificates
from tokenlat_cli.verify.polling import poll, wait_until
from tokenlat_cli.verify.processes import ManagedProcess, ProcessGroup, free_port
from tokenlat_cli.verify.promql import Queries
from tokenlat_cli.verify.runner import LocalDeployment, local_deployment, queries_for, service_telemetry
from tokenlat_cli.verify.services import Collector, CollectorEndpoints, start_collector

#: Proxy modes. refuse: the listener is closed and open connections are cut (what a stopped backend looks like);
#: stall: connections are accepted and requests read, never answered; reject: every request answered 400.
FORWARD, REFUSE, STALL, REJECT = "forward", "refuse", "stall", "reject"
#: How long delivery may take to catch up after a fault: the exporter's retry backoff can wait up to the profile's
#: retry_max_interval (30 s by default) before it tries again, then the queued exports drain one by one, on a
#: machine that other test runs share. A liveness bound, not a timing.
CATCH_UP = 150.0
#: The load app's pace: one request every 50 ms, exported every second.
LOAD_INTERVAL = 0.05
EXPORT_INTERVAL = 1.0
#: The repository root: the load app runs as ``python -m tests.e2e.faults`` from it.
REPO = Path(__file__).resolve().parents[2]
_FORWARDED_HEADERS = ("Content-Encoding", "Content-Type", "X-Prometheus-Remote-Write-Version", "User-Agent")


class _Server(ThreadingHTTPServer):
    """A threading HTTP server that knows its open connections, so that refuse mode can cut them: a backend that
    goes down takes its keep-alive connections with it."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.connections: set[socket.socket] = set()
        self.connections_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self.connections_lock:
            self.connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self.connections_lock:
            self.connections.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self.connections_lock:
            connections = list(self.connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the Collector's Go client uses it
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the counts are what the tests read."""

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        proxy = self.server.proxy
        mode, released = proxy.arrived()
        if mode == STALL:
            released.wait()  # until the stall ends; the Collector has timed out and given up on it by then
            self.close_connection = True
            return
        if mode == REFUSE:  # arrived on a connection being cut: no answer, as from a backend that went away
            self.close_connection = True
            return
        if mode == REJECT:
            self._answer(400, b"rejected by the tokenlat fault proxy\n")
            return
        headers = {name: self.headers[name] for name in _FORWARDED_HEADERS if name in self.headers}
        try:
            with requests.Session() as session:
                session.trust_env = False
                response = session.post(f"{proxy.upstream}{self.path}", data=body, headers=headers, timeout=30)
        except requests.RequestException as exc:
            self._answer(502, f"upstream failed: {exc}\n".encode())
            return
        self._answer(response.status_code, response.content)

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class FaultProxy:
    """A fault-injecting HTTP proxy on a free 127.0.0.1 port in front of ``upstream`` (the backend's base URL).

    ``received`` counts the requests that arrived in each mode (a request refused by a closed listener never
    arrives, and is not counted)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.received: Counter[str] = Counter()
        self._mode = FORWARD
        self._released = threading.Event()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._listen()

    def _listen(self) -> None:
        self._server = _Server(("127.0.0.1", self.port), self)
        threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True).start()

    def _close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server.cut_connections()
            self._server = None

    @property
    def mode(self) -> str:
        return self._mode

    def arrived(self) -> tuple[str, threading.Event]:
        """Count a request in the current mode; the mode, and the event that ends a stall."""
        with self._lock:
            self.received[self._mode] += 1
            return self._mode, self._released

    def set_mode(self, mode: str) -> None:
        with self._lock:
            previous, self._mode = self._mode, mode
            if previous == STALL:
                self._released.set()
            if mode == STALL:
                self._released = threading.Event()
        if mode == REFUSE and previous != REFUSE:
            self._close()
        elif previous == REFUSE and mode != REFUSE:
            self._listen()

    def close(self) -> None:
        self.set_mode(FORWARD)  # releases stalled handlers
        self._close()


@dataclass(frozen=True)
class Recorded:
    """What the load app recorded: the truth Prometheus is compared with."""

    requests: int
    input_tokens: int
    output_tokens: int


@dataclass(frozen=True)
class Delivered:
    """What Prometheus shows, against what was recorded; ``lost`` is what never arrived."""

    recorded: Recorded
    requests: float | None
    input_tokens: float | None
    output_tokens: float | None

    @property
    def exact(self) -> bool:
        r = self.recorded
        return (self.requests, self.input_tokens, self.output_tokens) == (
            r.requests,
            r.input_tokens,
            r.output_tokens,
        )

    @property
    def lost_requests(self) -> float:
        return self.recorded.requests - (self.requests or 0)

    def __str__(self) -> str:
        r = self.recorded
        return (
            f"requests {self.requests} of {r.requests}, input tokens {self.input_tokens} of {r.input_tokens}, "
            f"output tokens {self.output_tokens} of {r.output_tokens}"
        )


def collector_metrics(telemetry_url: str) -> Counter[str]:
    """The Collector's own metrics (its Prometheus /metrics page), summed over labels, by metric name."""
    totals: Counter[str] = Counter()
    for line in requests.get(telemetry_url, timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            series, value = line.rsplit(" ", 1)
            totals[series.split("{", 1)[0]] += float(value)
    return totals


class LoadApp:
    """The load app process (this module's ``main``): start it, pause, resume, stop it, read what it recorded."""

    def __init__(self, group: ProcessGroup, workdir: Path, deployment: LocalDeployment, histogram: str) -> None:
        self.status_path = workdir / "load-status.json"
        argv = [
            sys.executable, "-m", "tests.e2e.faults", "--endpoint", deployment.otlp_endpoint,
            "--profile", deployment.profile.name, "--histogram", histogram, "--status", str(self.status_path),
        ]  # fmt: skip
        env = {"PYTHONPATH": str(REPO)}
        self.process: ManagedProcess = group.start("load app", argv, workdir / "load-app.log", env=env)
        self.wait_for(lambda status: status["requests"] > 0, "recording")

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text(encoding="utf-8")))
        except FileNotFoundError:
            return {"requests": 0, "state": "starting"}

    def recorded(self) -> Recorded:
        status = self.status()
        return Recorded(status["requests"], status["input_tokens"], status["output_tokens"])

    def wait_for(self, done: Any, what: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll the status file until ``done(status)``; fail early, with the log, if the app exits unasked."""
        found: list[dict[str, Any]] = []

        def check() -> bool:
            found.append(self.status())
            return bool(done(found[-1]))

        self.process.wait_until(check, timeout, what)
        return found[-1]

    def wait_recorded(self, more: int) -> None:
        """Let the load run until it has recorded ``more`` requests beyond what it has now."""
        target = self.status()["requests"] + more
        self.wait_for(lambda status: status["requests"] >= target, f"recording {target} requests")

    def pause(self) -> Recorded:
        """Stop recording (exports go on); what was recorded."""
        self.process.signal_group(signal.SIGUSR1)
        self.wait_for(lambda status: status["state"] == "paused", "paused")
        return self.recorded()

    def resume(self) -> None:
        self.process.signal_group(signal.SIGUSR2)
        self.wait_for(lambda status: status["state"] == "recording", "recording again")

    def stop(self) -> Recorded:
        """SIGTERM: stop recording, flush (the SDK's final export), exit; what was recorded."""
        self.process.signal_group(signal.SIGTERM)
        code = self.process.popen.wait(timeout=60)
        assert code == 0, f"the load app exited with {code}"
        status = self.status()
        assert status["state"] == "stopped", status
        return self.recorded()


@dataclass
class FaultStack:
    """Prometheus 3, the fault proxy in front of it, the Collector writing through the proxy, and the load app."""

    group: ProcessGroup
    workdir: Path
    backend: Backend
    proxy: FaultProxy
    deployment: LocalDeployment
    config: str
    endpoints: CollectorEndpoints
    collector: Collector
    queries: Queries
    histogram: str
    restarts: int = 0

    def start_load(self) -> LoadApp:
        return LoadApp(self.group, self.workdir, self.deployment, self.histogram)

    def restart_collector(self) -> Collector:
        """A new Collector process with the same config and ports (its own log)."""
        self.restarts += 1
        workdir = self.workdir / f"collector-restart-{self.restarts}"
        workdir.mkdir()
        self.collector = start_collector(self.group, workdir, self.config, self.endpoints, env={})
        return self.collector

    def shown(self, recorded: Recorded) -> Delivered:
        """What Prometheus shows now for the load app's data."""
        token_type = semconv.GEN_AI_TOKEN_TYPE.replace(".", "_")
        scalar = self.backend.query.scalar
        return Delivered(
            recorded,
            scalar(self.queries.count(semconv.DURATION_SPEC)),
            scalar(self.queries.sum(semconv.TOKEN_USAGE_SPEC, f'{token_type}="input"')),
            scalar(self.queries.sum(semconv.TOKEN_USAGE_SPEC, f'{token_type}="output"')),
        )

    def delivered(self, recorded: Recorded, timeout: float = CATCH_UP) -> Delivered:
        """Poll Prometheus until it shows exactly ``recorded``, up to ``timeout``; what it shows last."""
        return poll(lambda: self.shown(recorded), lambda shown: shown.exact, timeout)

    def exports_forwarded(self, count: int, timeout: float = 60.0) -> int:
        """Wait until the backend has got ``count`` more remote-write requests through the proxy (the Collector is
        delivering); the new total."""
        target = self.proxy.received[FORWARD] + count
        return wait_until(
            lambda: self.proxy.received[FORWARD], lambda n: n >= target, timeout, f"{target} forwarded requests"
        )


def profile_with(name: str = "local", **overrides: Any) -> Profile:
    """A built-in profile with ``overrides`` (dotted paths: ``{"pipeline.memory_limiter.limit_mib": 64}``)."""
    profile = load_profile(name)
    data = json.loads(json.dumps(profile.data))
    for path, value in overrides.items():
        *parents, leaf = path.split(".")
        node = data
        for key in parents:
            node = node[key]
        node[leaf] = value
    return Profile(profile.name, profile.source, data)


@contextlib.contextmanager
def fault_stack(workdir: Path, profile: Profile | None = None) -> Iterator[FaultStack]:
    """Stand the path up: Prometheus 3, the proxy, the Collector writing through it; everything stopped after."""
    profile = profile or profile_with()
    with ProcessGroup() as group:
        certs = make_certificates(workdir / "certs")
        backend = start_backend(group, workdir, profile.data, certs)
        proxy = FaultProxy(backend.write_url.removesuffix("/api/v1/write"))
        try:
            through_proxy = dataclasses.replace(backend, write_url=f"{proxy.url}/api/v1/write")
            endpoints = CollectorEndpoints.pick()
            deployment = local_deployment(profile, through_proxy, endpoints, certs, workdir)
            config = render_collector_config(deployment.profile)
            collector = start_collector(group, workdir, config, endpoints, env={})
            histogram = "exponential" if profile.native else "explicit"
            yield FaultStack(
                group, workdir, backend, proxy, deployment, config, endpoints, collector,
                queries_for(profile, histogram), histogram,
            )  # fmt: skip
        finally:
            proxy.close()


class RssSampler:
    """Samples a process's resident set size (VmRSS in /proc/PID/status) in a thread, every 50 ms, and keeps the
    largest: the memory the kernel charges the Collector, which is what an OOM kill or a container limit sees."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.max_kib = self.sample()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def sample(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError(f"no VmRSS for process {self.pid}")

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(OSError, AssertionError):  # the process may be gone at the very end
                self.max_kib = max(self.max_kib, self.sample())

    def stop(self) -> float:
        """Stop sampling; the largest RSS seen, in MiB."""
        self._stop.set()
        self._thread.join()
        return self.max_kib / 1024


def flood_request(points: int, pad: int = 64) -> bytes:
    """One serialized OTLP ExportMetricsServiceRequest with ``points`` data points of a *delta* monotonic sum, each
    with its own attribute set (an id and ``pad`` bytes). The Collector must receive, decode and carry them through
    its pipeline (the memory the memory_limiter guards), but prometheusremotewrite drops delta sums when it
    translates (logged at debug, counted in otelcol_exporter_prometheusremotewrite_failed_translations, not as send
    failures), so the flood never reaches Prometheus: the tokenlat series there stay the test's exact truth."""
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue
    from opentelemetry.proto.metrics.v1.metrics_pb2 import AGGREGATION_TEMPORALITY_DELTA

    request = ExportMetricsServiceRequest()
    resource = request.resource_metrics.add()
    resource.resource.attributes.add(key="service.name", value=AnyValue(string_value="tokenlat-flood"))
    metric = resource.scope_metrics.add().metrics.add(name="tokenlat.flood")
    metric.sum.aggregation_temporality = AGGREGATION_TEMPORALITY_DELTA
    metric.sum.is_monotonic = True
    now = time.time_ns()
    padding = AnyValue(string_value="x" * pad)
    for index in range(points):
        point = metric.sum.data_points.add(start_time_unix_nano=now - 10**9, time_unix_nano=now, as_int=1)
        point.attributes.add(key="flood.id", value=AnyValue(string_value=f"flood-{index:08d}"))
        point.attributes.add(key="flood.pad", value=padding)
    return bytes(request.SerializeToString())


@dataclass
class FloodResult:
    sent_bytes: int = 0
    accepted: int = 0
    refused: Counter[str] = dataclasses.field(default_factory=Counter)


def flood(endpoint: str, payload: bytes, senders: int, total_bytes: int, deadline: float) -> FloodResult:
    """``senders`` threads, each with one OTLP/gRPC export of ``payload`` in flight at a time, until
    ``total_bytes`` have been offered or ``deadline`` seconds pass; how many were accepted and refused (by status)."""
    import grpc

    result = FloodResult()
    lock = threading.Lock()
    ends = time.monotonic() + deadline
    options = [("grpc.max_send_message_length", len(payload) + 1024)]
    with grpc.insecure_channel(endpoint.removeprefix("http://"), options=options) as channel:
        export = channel.unary_unary("/opentelemetry.proto.collector.metrics.v1.MetricsService/Export")

        def send() -> None:
            while time.monotonic() < ends:
                with lock:
                    if result.sent_bytes >= total_bytes:
                        return
                    result.sent_bytes += len(payload)
                try:
                    export(payload, timeout=30)
                except grpc.RpcError as exc:
                    with lock:
                        result.refused[exc.code().name] += 1
                else:
                    with lock:
                        result.accepted += 1

        threads = [threading.Thread(target=send, name=f"flood-{i}") for i in range(senders)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    return result


# The load app: this module run as a program.


class _Control:
    """What the signals asked for; the load loop acts on it at its next step (a signal handler only sets state)."""

    def __init__(self) -> None:
        self.paused = False
        self.stopping = False
        self.wake = threading.Event()

    def install(self) -> None:
        def on(signum: int, frame: object) -> None:
            if signum == signal.SIGTERM:
                self.stopping = True
            else:
                self.paused = signum == signal.SIGUSR1
            self.wake.set()

        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(signum, on)


def _write_status(path: Path, state: str, counts: Counter[str]) -> None:
    """Atomically: a reader never sees half a file."""
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps({"state": state, **counts}), encoding="utf-8")
    os.replace(partial, path)


def _record(telemetry: Telemetry, index: int, counts: Counter[str]) -> None:
    """One request with a known number of tokens (1 to 5 output, 10 to 16 input), counted once it is recorded."""
    input_tokens, output_tokens = 10 + index % 7, 1 + index % 5
    with telemetry.metrics.request({semconv.GEN_AI_OPERATION_NAME: "chat"}, input_tokens=input_tokens) as rec:
        for _ in range(output_tokens):
            rec.tokens()
    counts.update(requests=1, input_tokens=input_tokens, output_tokens=output_tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description="tokenlat fault tests' load app: a steady load, exported every 1 s")
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--histogram", required=True)
    parser.add_argument("--status", required=True, type=Path)
    args = parser.parse_args()
    control = _Control()
    control.install()
    deployment = LocalDeployment(load_profile(args.profile), args.endpoint, None, False)
    telemetry = service_telemetry(deployment, EXPORT_INTERVAL, args.histogram)
    counts: Counter[str] = Counter(requests=0, input_tokens=0, output_tokens=0)
    state = ""
    next_at = time.monotonic()
    while not control.stopping:
        wanted = "paused" if control.paused else "recording"
        if wanted != state:
            state = wanted
            _write_status(args.status, state, counts)
        if control.paused:
            control.wake.wait(1.0)
            control.wake.clear()
            continue
        _record(telemetry, counts["requests"], counts)
        if counts["requests"] % 10 == 0:
            _write_status(args.status, state, counts)
        # The load's pace (not a wait for a condition): a request every LOAD_INTERVAL, or at once when signalled.
        next_at = max(next_at + LOAD_INTERVAL, time.monotonic())
        control.wake.wait(max(0.0, next_at - time.monotonic()))
        control.wake.clear()
    _write_status(args.status, "flushing", counts)
    telemetry.shutdown()  # the final export; lost if the Collector is down now (the documented limit)
    _write_status(args.status, "stopped", counts)


if __name__ == "__main__":
    main()
