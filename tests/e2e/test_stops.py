"""Stops that cannot be swallowed: `tokenlat verify` and `tokenlat sidecar` on SIGTERM, Ctrl-C and SIGKILL.

Each verify run carries a marker of its own in its environment, which every process it starts inherits; "no process
of the run left" is checked by scanning /proc for that marker. The phase a signal hits is found from verify's
progress lines on stderr ("[3/7] starting ..."), never by sleeping. The bounds are liveness bounds (a run that
ignored the signal would go on for minutes), not timings: a stop takes well under a second here.

`make stress-stops` runs this file many times in a row: a stop must hold every time, not usually.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import queue
import re
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.subprocesses import TOKENLAT, read_line
from tests.subprocesses import stop as stop_child
from tokenlat import listening
from tokenlat.sidecar import LISTENING_PREFIX as SIDECAR_LISTENING_PREFIX
from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.services import start_synthetic

MARKER_ENV = "TOKENLAT_STOP_TEST_MARKER"
#: How long a stopped process may take to be gone: generous, a liveness bound.
STOP_BOUND = 20.0
#: How long verify may take to reach the phase a test signals it in (starting Prometheus and the Collector).
PHASE_TIMEOUT = 120.0


def _state(pid: int) -> str | None:
    """The process's state letter (R, S, Z ...), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _alive(pid: int) -> bool:
    state = _state(pid)
    return state is not None and state != "Z"  # a zombie has exited; only its parent has not reaped it yet


def marked_processes(marker: str) -> set[int]:
    """Live processes whose environment carries ``MARKER_ENV=marker``: everything a run started."""
    needle = f"{MARKER_ENV}={marker}".encode()
    found = set()
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            entries = environ.read_bytes().split(b"\0")
        except OSError:  # gone meanwhile, or not ours to read
            continue
        pid = int(environ.parent.name)
        if needle in entries and _alive(pid):
            found.add(pid)
    return found


def _wait_gone(pids: set[int], bound: float) -> set[int]:
    """Poll until none of ``pids`` is alive or ``bound`` seconds pass; what is still alive."""
    deadline = time.monotonic() + bound
    while True:
        alive = {pid for pid in pids if _alive(pid)}
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.05)


@dataclass
class VerifyRun:
    """A `tokenlat verify` child process, its stderr read line by line in a thread (so that the test can wait for a
    phase with a timeout, and the pipe never fills)."""

    proc: subprocess.Popen[str]
    marker: str
    tmpdir: Path
    lines: list[str] = field(default_factory=list)
    _queue: queue.Queue[str | None] = field(default_factory=queue.Queue)
    _reader: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for_phase(self, prefix: str, timeout: float = PHASE_TIMEOUT) -> None:
        """Block until verify prints a line starting with ``prefix``."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no {prefix!r} line within {timeout:.0f}s:\n{''.join(self.lines)}")
            if line is None:
                pytest.fail(f"verify ended before {prefix!r} (exit {self.proc.wait()}):\n{''.join(self.lines)}")
            self.lines.append(line)
            if line.startswith(prefix):
                return

    def stderr(self) -> str:
        """Everything verify printed on stderr (once it has exited)."""
        assert self._reader is not None
        self._reader.join(timeout=STOP_BOUND)
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                return "".join(self.lines)
            if line is not None:
                self.lines.append(line)

    def temp_dirs(self) -> list[Path]:
        return list(self.tmpdir.glob("tokenlat-verify-*"))


@pytest.fixture
def start_verify(tmp_path: Path) -> Iterator[Callable[[list[str]], VerifyRun]]:
    """Starts `tokenlat verify ARGS` with a marker; afterwards kills whatever of any run is left, even when the test
    failed (the run itself, and every process carrying its marker)."""
    runs: list[VerifyRun] = []

    def start(args: list[str]) -> VerifyRun:
        marker = uuid.uuid4().hex
        tmpdir = tmp_path / f"tmp-{len(runs)}"
        tmpdir.mkdir()
        proc = subprocess.Popen(
            [*TOKENLAT, "verify", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "TMPDIR": str(tmpdir), MARKER_ENV: marker},
        )
        run = VerifyRun(proc, marker, tmpdir)
        runs.append(run)
        return run

    yield start
    for run in runs:
        stop_child(run.proc)
        for pid in marked_processes(run.marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


LONG_LOAD = ["--requests", "5000", "--concurrency", "20"]
SHORT_LOAD = ["--requests", "40", "--concurrency", "20"]


@pytest.mark.parametrize(
    ("phase", "signum", "args"),
    [
        pytest.param("[1/7] starting the prometheus backend", signal.SIGTERM, LONG_LOAD, id="sigterm-backend-start"),
        pytest.param("[3/7] starting the tokenlat Collector", signal.SIGTERM, LONG_LOAD, id="sigterm-collector-start"),
        pytest.param("[5/7] streaming", signal.SIGTERM, LONG_LOAD, id="sigterm-load"),
        pytest.param("[5/7] streaming", signal.SIGTERM, [*LONG_LOAD, "--via-sidecar"], id="sigterm-load-via-sidecar"),
        pytest.param("[6/7] waiting for the data", signal.SIGTERM, SHORT_LOAD, id="sigterm-waiting-for-data"),
        pytest.param("[5/7] streaming", signal.SIGINT, LONG_LOAD, id="sigint-load"),
        pytest.param("[3/7] starting the tokenlat Collector", signal.SIGINT, LONG_LOAD, id="sigint-collector-start"),
    ],
)
def test_verify_stops_on_a_signal_in_every_phase(
    collector_binary: Path,
    prometheus_binary: Path,
    start_verify: Callable[[list[str]], VerifyRun],
    phase: str,
    signum: signal.Signals,
    args: list[str],
) -> None:
    run = start_verify(["--profile", "local", *args])
    run.wait_for_phase(phase)
    if phase.startswith("[5/7]"):  # the scan sees the run's services: a run that leaves none would prove nothing
        assert len(marked_processes(run.marker) - {run.proc.pid}) >= 3, run.lines
    run.proc.send_signal(signum)
    signalled = time.monotonic()
    try:
        run.proc.wait(timeout=STOP_BOUND)
    except subprocess.TimeoutExpired:
        pytest.fail(f"verify still runs {STOP_BOUND:.0f}s after {signum.name}:\n{run.stderr()}")
    took = time.monotonic() - signalled
    err = run.stderr()
    assert run.proc.returncode == 128 + signum, err
    assert f"Error: interrupted by {signum.name}; every started process was stopped" in err
    assert not _wait_gone(marked_processes(run.marker), 5.0), "processes of the run outlived it"
    assert not run.temp_dirs(), "the temp dir must be removed"
    print(f"{signum.name} at {phase!r}: exited in {took:.2f}s")


#: What a process stopped by a second signal says. Two signals sent at once may be delivered in either order (Linux
#: delivers pending ones lowest number first).
SECOND_SIGNAL = re.compile(r"interrupted by SIG(INT|TERM) \(then SIG(INT|TERM)\); every started process was killed")


def test_a_second_signal_ends_verify_at_once(
    collector_binary: Path, prometheus_binary: Path, start_verify: Callable[[list[str]], VerifyRun]
) -> None:
    # Two different signals: two of the same kind, sent at once, may reach the process as one.
    run = start_verify(["--profile", "local", *LONG_LOAD])
    run.wait_for_phase("[5/7] streaming")
    run.proc.send_signal(signal.SIGTERM)
    run.proc.send_signal(signal.SIGINT)
    run.proc.wait(timeout=STOP_BOUND)
    err = run.stderr()
    assert run.proc.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), err
    assert SECOND_SIGNAL.search(err), err
    assert not _wait_gone(marked_processes(run.marker), 5.0)
    assert not run.temp_dirs()


def test_sigkill_of_verify_leaves_no_orphans(
    collector_binary: Path, prometheus_binary: Path, start_verify: Callable[[list[str]], VerifyRun]
) -> None:
    # No handler runs on SIGKILL: the kernel kills the children (PR_SET_PDEATHSIG), even in their own sessions.
    run = start_verify(["--profile", "local", *LONG_LOAD, "--via-sidecar"])
    run.wait_for_phase("[5/7] streaming")
    children = marked_processes(run.marker) - {run.proc.pid}
    assert len(children) >= 4, run.lines  # Prometheus, the Collector, the synthetic server, the sidecar
    run.proc.kill()
    run.proc.wait(timeout=STOP_BOUND)
    assert not _wait_gone(children, STOP_BOUND), "children outlived a SIGKILLed verify"
    assert not marked_processes(run.marker)


# -- tokenlat sidecar


class _MetricsSink(BaseHTTPRequestHandler):
    """An OTLP/HTTP receiver that accepts everything and counts the exports (to see the sidecar's last flush)."""

    exports = 0

    def do_POST(self) -> None:  # http.server's naming
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        type(self).exports += 1
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:  # the base class's signature
        pass


@pytest.fixture
def metrics_sink() -> Iterator[tuple[str, type[_MetricsSink]]]:
    handler = type("Sink", (_MetricsSink,), {"exports": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", handler
    server.shutdown()
    server.server_close()


@pytest.fixture
def slow_model(tmp_path: Path) -> Iterator[str]:
    """The synthetic model server, streaming 30 tokens 0.1 s apart: a stream is in flight for about 3 s."""
    with ProcessGroup() as group:
        server = start_synthetic(
            group, tmp_path, ["--ttft=fixed:0.05", "--inter-token=fixed:0.1", "--output-tokens=30-30"]
        )
        yield server.url


@pytest.fixture
def start_sidecar(
    metrics_sink: tuple[str, type[_MetricsSink]],
) -> Iterator[Callable[..., tuple[subprocess.Popen[str], str]]]:
    children: list[subprocess.Popen[str]] = []

    def start(upstream: str, *args: str) -> tuple[subprocess.Popen[str], str]:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": metrics_sink[0],
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",  # only the last flush exports
        }
        proc = subprocess.Popen(
            [*TOKENLAT, "sidecar", "--upstream", upstream, "--listen", "127.0.0.1:0", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        children.append(proc)
        url = listening.parse(read_line(proc, 30), SIDECAR_LISTENING_PREFIX)
        assert url is not None
        return proc, url

    yield start
    for proc in children:
        stop_child(proc)


def _open_stream(url: str) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """A streaming chat completion through ``url``, its first bytes read (so that it is in flight)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=STOP_BOUND)
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hello"}]}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    assert response.status == 200
    assert response.read1(64)
    return conn, response


def _exit_within(proc: subprocess.Popen[str], bound: float) -> tuple[int, float]:
    started = time.monotonic()
    try:
        code = proc.wait(timeout=bound)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the sidecar still runs {bound:.0f}s after the signal")
    return code, time.monotonic() - started


def test_sidecar_drains_a_stream_in_flight_on_sigterm(
    slow_model: str,
    start_sidecar: Callable[..., tuple[subprocess.Popen[str], str]],
    metrics_sink: tuple[str, type[_MetricsSink]],
) -> None:
    proc, url = start_sidecar(slow_model)
    conn, response = _open_stream(url)
    proc.send_signal(signal.SIGTERM)
    rest = response.read()  # the drain lets it finish
    conn.close()
    assert b"data: [DONE]" in rest
    code, took = _exit_within(proc, STOP_BOUND)
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert metrics_sink[1].exports >= 1, "the last export must be flushed before the exit"
    print(f"sidecar drained a stream and exited {took:.2f}s after it ended")


def test_sidecar_stops_at_once_with_an_idle_keep_alive_connection(
    slow_model: str, start_sidecar: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    proc, url = start_sidecar(slow_model)  # default --drain-timeout 30: an idle connection must not hold the drain
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=STOP_BOUND)
    try:
        conn.request("GET", "/-/tokenlat/health")
        response = conn.getresponse()
        response.read()
        assert response.status == 200 and not response.will_close  # kept alive, idle
        proc.send_signal(signal.SIGTERM)
        code, took = _exit_within(proc, STOP_BOUND)
    finally:
        conn.close()
    assert code == 0
    print(f"sidecar with an idle keep-alive connection exited {took:.2f}s after SIGTERM")


def test_a_second_signal_cuts_the_sidecars_drain(
    slow_model: str, start_sidecar: Callable[..., tuple[subprocess.Popen[str], str]]
) -> None:
    proc, url = start_sidecar(slow_model)
    conn, _ = _open_stream(url)  # about 3 s to go: the drain would wait for it
    try:
        proc.send_signal(signal.SIGTERM)
        proc.send_signal(signal.SIGINT)
        code, took = _exit_within(proc, STOP_BOUND)
    finally:
        conn.close()
    assert code in (128 + signal.SIGINT, 128 + signal.SIGTERM)
    assert proc.stderr is not None and SECOND_SIGNAL.search(proc.stderr.read())
    assert took < 2.5, "cut, not drained"  # the stream had about 3 s to go
