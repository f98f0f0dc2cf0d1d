"""Child processes that verify starts, and the guarantee that it stops every one of them.

Each process writes its output to a log file in verify's temp dir; when one dies on start or never becomes
ready, the error shows the tail of that log, which is where the reason (a busy port, a bad flag) is.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType

import requests

LOG_TAIL_LINES = 20


class ServiceError(RuntimeError):
    """A service that could not be started or did not become ready."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it; a tiny race remains until the user binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


class ManagedProcess:
    """One child process with its log file."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._log = log_path.open("wb")
        # A session of its own: a Ctrl-C in the terminal reaches verify only, which then stops the children in
        # order (the Collector must flush before Prometheus goes away).
        self.popen = subprocess.Popen(
            self.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )

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
            time.sleep(interval)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; always closes the log."""
        try:
            if self.popen.poll() is None:
                self.popen.send_signal(signal.SIGTERM)
                try:
                    self.popen.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    self.popen.kill()
                    self.popen.wait(timeout=grace)
        finally:
            self._log.close()


class ProcessGroup:
    """Starts processes and stops all of them, last started first, however the block is left."""

    def __init__(self) -> None:
        self._processes: list[ManagedProcess] = []

    def start(
        self, name: str, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None
    ) -> ManagedProcess:
        try:
            process = ManagedProcess(name, argv, log_path, env)
        except OSError as exc:
            raise ServiceError(f"{name} could not be started ({argv[0]}): {exc}") from None
        self._processes.append(process)
        return process

    def stop_all(self) -> None:
        while self._processes:
            self._processes.pop().stop()

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()
