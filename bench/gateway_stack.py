"""The gateway bench's services: a remote-write sink and one tokenlat Collector rendered as the gateway.

The Collector is rendered from a built-in profile as an operator renders it, with verify's machinery pointing it
at this run's sink and free ports (``local_deployment``). Three changes to the profile, each for the bench:

- telemetrygen's series attribute (``timebox``) joins the metric allowlist: otherwise the guard would drop it and
  merge every point of a metric into one, and the gateway would export one series whatever was sent;
- the write-ahead log is off: it is a durability option with a disk cost of its own, not what is measured here;
- the memory_limiter may be set (``--limit-mib``), to show where it refuses; by default it is the profile's.

The role: the gateway render (``--role gateway``, the tiers layout of docs/scale-out.md) where it carries the
metrics pipeline; otherwise the standalone render, whose metrics pipeline is the same (memory_limiter, the allowlist
guard, batch, prometheus_remote_write). The run records which one it measured.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bench.telemetrygen import SERIES_ATTRIBUTE
from tokenlat_cli.profiles import Profile, load_profile
from tokenlat_cli.render import RenderError, env_vars_referenced, render_collector_config
from tokenlat_cli.verify.backends import Backend, start_backend
from tokenlat_cli.verify.certs import make_certificates
from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.runner import local_deployment
from tokenlat_cli.verify.services import Collector, CollectorEndpoints, start_collector

#: The built-in profile each sink is verified with, and so the one the bench starts from.
SINK_PROFILES = {"victoria-metrics": "selfhosted", "thanos": "thanos"}
METRICS_EXPORTER = "prometheus_remote_write"


def bench_profile(sink: str, limit_mib: int | None = None, spike_mib: int | None = None) -> Profile:
    """The sink's built-in profile with the bench's three changes (the module's docstring)."""
    base = load_profile(SINK_PROFILES[sink])
    data = copy.deepcopy(base.data)
    metrics = data["metrics"]
    metrics["attributes"] = [*metrics["attributes"], SERIES_ATTRIBUTE]
    data["backend"]["wal"]["enabled"] = False
    limiter = data["pipeline"]["memory_limiter"]
    if limit_mib is not None:
        limiter["limit_mib"] = limit_mib
        limiter["spike_limit_mib"] = spike_mib if spike_mib is not None else max(1, limit_mib // 4)
    data["service"]["log_level"] = "warn"
    return Profile(base.name, base.source, data)


def gateway_config(profile: Profile) -> tuple[str, str]:
    """The config the gateway runs, and the role it was rendered as (see the module's docstring)."""
    with contextlib.suppress(RenderError):
        text = render_collector_config(profile, "gateway")
        if METRICS_EXPORTER in text.split("\nservice:", 1)[-1]:  # in a pipeline, not only defined
            return text, "gateway"
    return render_collector_config(profile), "standalone"


@dataclass
class Stack:
    group: ProcessGroup
    workdir: Path
    profile: Profile
    role: str
    backend: Backend
    collector: Collector

    @property
    def endpoint(self) -> str:
        return self.collector.otlp_grpc_endpoint

    @property
    def gateway_pid(self) -> int:
        return self.collector.process.popen.pid

    @property
    def sink_pid(self) -> int:
        """The receiving process (Thanos Query, when there is one, only reads)."""
        return self.backend.processes[0].popen.pid


@contextlib.contextmanager
def gateway_stack(workdir: Path, profile: Profile) -> Iterator[Stack]:
    """The sink and the gateway, ready; both stopped however the block is left."""
    with ProcessGroup() as group:
        certs = make_certificates(workdir / "certs")
        backend = start_backend(group, workdir, profile.data, certs)
        endpoints = CollectorEndpoints.pick()
        deployment = local_deployment(profile, backend, endpoints, certs, workdir)
        config, role = gateway_config(deployment.profile)
        # Variables the config reads that the sink does not provide (a salt, where traces are on): any value.
        env = {var: "tokenlat-bench" for var in env_vars_referenced(config)} | backend.env
        collector = start_collector(group, workdir, config, endpoints, env)
        yield Stack(group, workdir, deployment.profile, role, backend, collector)
