"""Child processes that verify starts, and the guarantee that it stops every one of them.

Each process writes its output to a log file in verify's temp dir; when one dies on start or never becomes
ready, the error shows the tail of that log, which is where the reason (a busy port, a bad flag) is.

How every child is stopped, however verify ends:

- normally, or with an exception: ``ProcessGroup``'s block stops them, last started first (SIGTERM, then SIGKILL);
- on SIGTERM or Ctrl-C: verify's :class:`tokenlat_cli.stopping.Stopper` calls :meth:`ProcessGroup.terminate` from
  its watcher thread (SIGTERM to all at once, and no start after that), and the block then waits for them;
- when verify itself is killed (SIGKILL, an OOM kill): on Linux every child is started with PR_SET_PDEATHSIG =
  SIGKILL, so the kernel kills it when verify dies. PDEATHSIG fires when the *thread* that started the child ends,
  so children are started from the main thread only (it lives as long as verify).

Each child runs in a session of its own (a Ctrl-C in the terminal reaches verify only, which then stops the
children itself), and therefore in a process group of its own: stop signals go to that whole group, so that
whatever a child started and kept in its group (none of today's children starts any) is stopped with it. A
grandchild that leaves the group, or outlives a SIGKILLed child, is that child's business: PDEATHSIG covers
verify's own children only.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import functools
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import requests

from tokenlat_cli import stopping

LOG_TAIL_LINES = 20
#: How long a child gets to exit on SIGTERM before SIGKILL: when stopped in order at the end of a run (the Collector
#: flushing), and after a stop request. Then the run is abandoned and the stop must be quick: the Collector, whose
#: backend is being stopped with it, would otherwise spend the whole grace retrying its last export.
STOP_GRACE = 10.0
INTERRUPTED_GRACE = 2.0
#: prctl(2) option: the signal the kernel sends this process when its parent (thread) dies.
_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """A service that could not be started or did not become ready."""


# Ports handed out lately, not handed out again: a port is released when free_port returns, so two calls in a row
# could otherwise both find the same one free before either service binds it.
_RECENT_PORTS: collections.deque[int] = collections.deque(maxlen=2000)
_LOWEST_PORT = 10_000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text(encoding="ascii").split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999  # Linux's default


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now, for a service to listen on.

    Chosen below the kernel's ephemeral range. A port the OS picks (bind to port 0) comes from that range, from
    which every outgoing connection also takes its local port; between this check and the service's bind (a
    Thanos Receive opens its TSDB first), a connection made meanwhile took one such port in CI and the service
    failed with "address already in use". Below the range only another listener can take it."""
    low = _ephemeral_range()[0]
    if low - _LOWEST_PORT >= 1000:
        for _ in range(200):
            port = random.randrange(_LOWEST_PORT, low)
            if port in _RECENT_PORTS:
                continue
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                try:
                    sock.bind(("127.0.0.1", port))
                except OSError:
                    continue
            _RECENT_PORTS.append(port)
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:  # no room below the range: let the OS pick
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    _RECENT_PORTS.append(port)
    return port


def http_ok(url: str, verify: str | bool = True) -> bool:
    """Whether GET ``url`` answers 200 now (readiness probes). Never through the environment's proxies: these
    are this run's local services."""
    with requests.Session() as session:
        session.trust_env = False
        try:
            return session.get(url, timeout=1, verify=verify).status_code == 200
        except requests.RequestException:
            return False


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return "(no log written)"
    return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"


@functools.cache
def _prctl() -> Callable[..., int] | None:
    """libc's prctl on Linux (the symbols of the running program, which links libc: no library search)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return prctl


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec_fn that has the child killed when this process dies (Linux), or None where there is no prctl.

    Everything it needs is looked up here, in the parent: between fork and exec the child may only do what is safe
    with other threads' locks held as they were at the fork (no import, no new ctypes lookup).
    """
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    kill, option = ctypes.c_ulong(signal.SIGKILL), ctypes.c_int(_PR_SET_PDEATHSIG)

    def preexec() -> None:
        prctl(option, kill)
        # The parent may have died between the fork and the prctl: then no signal will come, so go now.
        if os.getppid() != parent:
            os._exit(1)

    return preexec


class ManagedProcess:
    """One child process with its log file. Safe to stop from two threads at once (the run and the Stopper)."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        self._stop_lock = threading.Lock()
        # A session of its own: a Ctrl-C in the terminal reaches verify only, which then stops the children itself
        # (at the end of a run, in order: the Collector must flush before Prometheus goes away). setsid runs before
        # preexec_fn, and PDEATHSIG does not care about sessions: the child still dies with verify.
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                start_new_session=True,
                preexec_fn=_die_with_parent(),  # fork-safe: see _die_with_parent
            )
        except BaseException:
            self._log.close()
            raise

    def failure(self, reason: str) -> ServiceError:
        return ServiceError(f"{self.name} {reason}; last lines of {self.log_path}:\n{log_tail(self.log_path)}")

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
        """Poll ``ready`` until it is true; fail early, with the log, if the process exits meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.popen.poll()
            if code is not None:
                raise self.failure(f"exited with code {code} before it was {what}")
            if ready():
                return
            if time.monotonic() > deadline:
                raise self.failure(f"was not {what} within {timeout:.0f}s")
            stopping.sleep(interval)  # a stop request ends the wait here

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to the child's process group (itself and whatever it started in its session), if the
        child has not been reaped: until then its pid, and so its group id, cannot be another process's."""
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signum)

    def stop(self, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds (default: STOP_GRACE, or INTERRUPTED_GRACE after a stop
        request); always closes the log."""
        if grace is None:
            grace = INTERRUPTED_GRACE if stopping.requested() else STOP_GRACE
        with self._stop_lock:
            try:
                if self.popen.poll() is None:
                    self.signal_group(signal.SIGTERM)
                    try:
                        self.popen.wait(timeout=grace)
                    except subprocess.TimeoutExpired:
                        self.signal_group(signal.SIGKILL)
                        self.popen.wait(timeout=grace)
            finally:
                self._log.close()


class ProcessGroup:
    """Starts processes and stops all of them, last started first, however the block is left.

    :meth:`terminate` and :meth:`kill` may be called from another thread (the Stopper's) at any time: a start
    either completed before (and its process is signalled) or sees the group closed and raises
    :class:`tokenlat_cli.stopping.Interrupted`, so that no child is started after a stop.
    """

    def __init__(self) -> None:
        self._processes: list[ManagedProcess] = []
        self._lock = threading.Lock()
        self._closed = False

    def start(
        self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        if threading.current_thread() is not threading.main_thread():
            # PDEATHSIG is tied to the thread that starts the child: one started from a thread that ends would be
            # killed with that thread.
            raise RuntimeError("ProcessGroup.start must be called from the main thread")
        with self._lock:
            stopping.checkpoint()
            if self._closed:
                raise stopping.Interrupted("a stop request")
            try:
                process = ManagedProcess(name, argv, log_path, env)
            except OSError as exc:
                raise ServiceError(f"{name} could not be started ({argv[0]}): {exc}") from None
            self._processes.append(process)
        return process

    def _signal_all(self, signum: int) -> None:
        with self._lock:
            self._closed = True
            processes = list(self._processes)
        for process in reversed(processes):
            process.signal_group(signum)

    def terminate(self) -> None:
        """SIGTERM to every child at once, and no start after it; returns without waiting (any thread)."""
        self._signal_all(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to every child; returns without waiting (any thread)."""
        self._signal_all(signal.SIGKILL)

    def stop_all(self) -> None:
        while True:
            with self._lock:
                if not self._processes:
                    return
                process = self._processes.pop()
            process.stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
