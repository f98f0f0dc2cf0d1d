"""What running the Collector of a profile takes, whatever runs it (Kubernetes, systemd, a container): memory
sizing, the ports it listens on, the files it reads, and the tiers of its layout.

Kept apart from the renderers so that the Kubernetes manifests and the systemd unit size memory and name files the
same way: a profile deployed both ways must not get two different memory stories.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import render_collector_config

# Where the Collector is installed and configured on a host (systemd) and in the image (collector/Dockerfile).
BINARY = "/usr/local/bin/tokenlat-otelcol"
# Headroom of the container/cgroup limit over memory_limiter's limit_mib (see Memory).
HEADROOM = 1.25


@dataclass(frozen=True)
class Memory:
    """Memory of one Collector process, derived from pipeline.memory_limiter.

    memory_limiter refuses data once the Go heap passes limit_mib - spike_limit_mib and forces a GC at limit_mib.
    GOMEMLIMIT at limit_mib makes the Go runtime itself collect harder as it nears that limit, so the heap does
    not overshoot between two of the limiter's checks (GOGC alone lets it grow to twice the live heap). The
    process is more than its heap (goroutine stacks, runtime metadata, fragmentation, pages not yet returned to
    the OS), so the hard limit (cgroup / container) sits 25% above: GOMEMLIMIT is then 80% of it, the ratio the
    Collector's own guidance uses. Reaching the hard limit means an OOM kill, which loses everything in flight;
    reaching limit_mib only means refused (retried) data.
    """

    limit_mib: int  # memory_limiter.limit_mib: the request, and GOMEMLIMIT
    spike_limit_mib: int
    hard_limit_mib: int  # container limit / systemd MemoryMax

    @property
    def gomemlimit(self) -> str:
        return f"{self.limit_mib}MiB"

    def explanation(self) -> list[str]:
        """Comment lines that state the reasoning next to the numbers, for the rendered files."""
        soft = self.limit_mib - self.spike_limit_mib
        return [
            f"Memory: memory_limiter refuses data above {soft} MiB of heap (limit_mib {self.limit_mib} - "
            f"spike_limit_mib {self.spike_limit_mib}) and forces a GC at {self.limit_mib} MiB.",
            f"GOMEMLIMIT={self.gomemlimit} makes the Go runtime collect harder near that limit, so the heap does not "
            "overshoot between the limiter's checks.",
            f"The hard limit is {self.hard_limit_mib} MiB ({HEADROOM:.2f} x limit_mib): the process is more than its "
            "heap (stacks, runtime, fragmentation), and reaching it is an OOM kill that loses data in flight.",
        ]


def memory(profile: Profile) -> Memory:
    limiter = profile.data["pipeline"]["memory_limiter"]
    return Memory(
        limit_mib=limiter["limit_mib"],
        spike_limit_mib=limiter["spike_limit_mib"],
        hard_limit_mib=math.ceil(limiter["limit_mib"] * HEADROOM),
    )


def host_port(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


@dataclass(frozen=True)
class Port:
    name: str  # a Kubernetes port name (IANA service name: at most 15 characters)
    host: str
    port: int


def ports(profile: Profile) -> list[Port]:
    """What the Collector listens on: the OTLP receivers, health_check and its own metrics."""
    p = profile.data
    listed = [
        ("otlp-grpc", p["receiver"]["grpc_endpoint"]),
        ("otlp-http", p["receiver"]["http_endpoint"]),
        ("health", p["service"]["health_endpoint"]),
    ]
    found = [Port(name, *host_port(endpoint)) for name, endpoint in listed]
    return [*found, Port("metrics", p["service"]["telemetry_host"], p["service"]["telemetry_port"])]


def port(profile: Profile, name: str) -> Port:
    return next(p for p in ports(profile) if p.name == name)


def loopback_ports(profile: Profile) -> list[Port]:
    """Ports bound to loopback: nothing outside the host (or pod) reaches them."""
    return [p for p in ports(profile) if p.host in ("127.0.0.1", "localhost", "::1", "[::1]")]


def tls_files(profile: Profile) -> list[str]:
    """Every certificate and key file the Collector reads, as the profile names them (paths in the Collector's
    file system), in a stable order."""
    p = profile.data
    files = [p["receiver"]["tls"][k] for k in ("cert_file", "key_file", "client_ca_file")]
    files += [p["backend"]["tls"][k] for k in ("ca_file", "cert_file", "key_file")]
    return list(dict.fromkeys(f for f in files if f))


@dataclass(frozen=True)
class Tier:
    """One kind of Collector process in the profile's layout."""

    role: str  # standalone, agent or gateway (render_collector_config's roles)
    name: str  # the workload's name
    config_file: str  # the config's file name (a ConfigMap key, a file under /etc/tokenlat)

    def config(self, profile: Profile) -> str:
        return render_collector_config(profile, self.role)


def two_tier(profile: Profile) -> bool:
    """Agents plus gateways: the profile lists gateways (tiers.gateways)."""
    return bool(profile.data["tiers"]["gateways"])


def tiers(profile: Profile) -> list[Tier]:
    if two_tier(profile):
        return [Tier("agent", "tokenlat-agent", "agent.yaml"), Tier("gateway", "tokenlat-gateway", "gateway.yaml")]
    return [Tier("standalone", "tokenlat-collector", "config.yaml")]
