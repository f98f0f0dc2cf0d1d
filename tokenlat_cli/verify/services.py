"""The real services verify runs: the built Collector, the synthetic model server and the sidecar (the receivers
are in backends.py; which Prometheus, in prometheus.py)."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenlat import listening
from tokenlat.sidecar import LISTENING_PREFIX as SIDECAR_LISTENING_PREFIX
from tokenlat_cli.collector import find_collector
from tokenlat_cli.verify.load import SYNTHETIC_SERVER_ARGS
from tokenlat_cli.verify.processes import ManagedProcess, ProcessGroup, free_port, http_ok
from tokenlat_cli.verify.synthetic import LISTENING_PREFIX

START_TIMEOUT = 60.0


@dataclass
class Collector:
    process: ManagedProcess
    otlp_grpc_endpoint: str
    telemetry_url: str


def start_collector(
    group: ProcessGroup, workdir: Path, config_text: str, endpoints: CollectorEndpoints, env: dict[str, str]
) -> Collector:
    """The ocb-built Collector with a rendered config; ready when its health check answers."""
    config = workdir / "collector.yaml"
    config.write_text(config_text, encoding="utf-8")
    argv = [str(find_collector()), f"--config={config}"]
    process = group.start("tokenlat-otelcol", argv, workdir / "collector.log", env=env)
    process.wait_until(lambda: http_ok(f"http://{endpoints.health}"), START_TIMEOUT, "healthy")
    return Collector(process, endpoints.otlp_grpc, f"http://{endpoints.telemetry}/metrics")


@dataclass(frozen=True)
class CollectorEndpoints:
    """Free local ports for every address the Collector listens on."""

    otlp_grpc: str
    otlp_http: str
    health: str
    telemetry: str

    @classmethod
    def pick(cls) -> CollectorEndpoints:
        return cls(*(f"127.0.0.1:{free_port()}" for _ in range(4)))


@dataclass
class ListeningService:
    """A child process that announces its URL with one line on stdout."""

    process: ManagedProcess
    url: str


def start_listening(
    group: ProcessGroup, name: str, argv: list[str], log_path: Path, prefix: str, env: dict[str, str] | None = None
) -> ListeningService:
    """Start ``argv`` as ``name``, logging to ``log_path``; ready once its log announces its URL after ``prefix``
    (``tokenlat.listening``), within START_TIMEOUT."""
    process = group.start(name, argv, log_path, env=env)
    found: list[str] = []

    def announced() -> bool:
        url = listening.parse(log_path.read_text(encoding="utf-8", errors="replace"), prefix)
        if url is not None:
            found.append(url)
        return url is not None

    process.wait_until(announced, START_TIMEOUT, "listening")
    return ListeningService(process, found[0])


def start_synthetic(group: ProcessGroup, workdir: Path, args: list[str]) -> ListeningService:
    """The synthetic model server in its own process, so that its timers do not share the load's event loop.

    It streams as the load expects (``SYNTHETIC_SERVER_ARGS``: reasoning, then content, then a tool call), so that
    verify covers every kind of token; ``args`` come after, and win.
    """
    argv = [
        sys.executable, "-m", "tokenlat_cli.verify.synthetic", "--host", "127.0.0.1", "--port", "0",
        *SYNTHETIC_SERVER_ARGS, *args,
    ]  # fmt: skip
    return start_listening(group, "synthetic model server", argv, workdir / "synthetic.log", LISTENING_PREFIX)


def start_sidecar(
    group: ProcessGroup, workdir: Path, upstream: str, env: dict[str, str], args: Sequence[str] = ()
) -> ListeningService:
    """`tokenlat sidecar` in front of the model server, as an operator runs it; ``env`` carries its telemetry setup,
    ``args`` more options (the soak shortens its timeouts so that its limits run within minutes)."""
    argv = [sys.executable, "-m", "tokenlat_cli", "sidecar", "--upstream", upstream, "--listen", "127.0.0.1:0", *args]
    return start_listening(group, "tokenlat sidecar", argv, workdir / "sidecar.log", SIDECAR_LISTENING_PREFIX, env)
