"""The scale-out run's deployment (scale_out.py): a Thanos Receive hashring, three gateways and two agents rendered
from the profile, the synthetic model server and four instrumented services, all started and all stopped together.

The gateways and agents run the profile as rendered (``render_collector_config(profile, "gateway" | "agent")``)
with every address pointed at this run's services and free ports (runner.local_deployment); an agent's gateways are
``tiers.gateways``, kept by the gateway watcher. Each service is the library as a service sets it up
(runner.service_telemetry), with an export gate (export_gate.py) where its OTLP exporter sits.
"""

from __future__ import annotations

import copy
import secrets
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import Counter, ObservableCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality

from tokenlat.configure import Telemetry, TLSFiles
from tokenlat_cli import stopping
from tokenlat_cli.collector import validate_config
from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import render_collector_config
from tokenlat_cli.verify.backends import Backend, start_thanos_hashring_backend
from tokenlat_cli.verify.certs import CertificateSet, make_certificates
from tokenlat_cli.verify.export_gate import ExportGate, ExportRecord
from tokenlat_cli.verify.gateway_discovery import Agent, GatewayWatcher
from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.promql import Queries
from tokenlat_cli.verify.runner import (
    LocalDeployment,
    Stages,
    VerifySettings,
    histogram_kind,
    local_deployment,
    queries_for,
    service_telemetry,
    synthetic_args,
    without_traces,
)
from tokenlat_cli.verify.services import Collector, CollectorEndpoints, start_collector, start_synthetic
from tokenlat_cli.verify.thanos_hashring import INGESTORS, REPLICATION_FACTOR, ReceiveHashring

NODES = ("node-a", "node-b")
#: Two services a node, each sending to its node's agent: (node, service.name).
SERVICES = tuple((node, f"tokenlat-svc-{node[-1]}{n}") for node in NODES for n in (1, 2))
GATEWAYS = 3


@dataclass
class Gateway:
    """A gateway Collector; ``killed_at`` once the run has killed it (it is not started again)."""

    index: int
    collector: Collector
    endpoints: CollectorEndpoints
    killed_at: float | None = None

    @property
    def address(self) -> str:
        """The OTLP gRPC address the agents route to."""
        return self.endpoints.otlp_grpc

    @property
    def name(self) -> str:
        return f"gateway {self.index}"


@dataclass
class Node:
    """A node: its agent, and the deployment (profile, endpoints) the agent and its services use."""

    name: str
    agent: Agent
    endpoints: CollectorEndpoints
    deployment: LocalDeployment


@dataclass
class Service:
    """An instrumented service: the library's setup, with the export gate where its OTLP exporter sits."""

    name: str
    node: str
    gate: ExportGate
    telemetry: Telemetry
    shut_down: bool = False

    def ok_exports_since(self, since: float) -> list[ExportRecord]:
        return [r for r in self.gate.snapshot() if r.ok and r.started >= since]

    def shutdown(self) -> None:
        """The service's last export (its gate open for good), once."""
        self.gate.release()
        if not self.shut_down:
            self.shut_down = True
            self.telemetry.shutdown()


@dataclass
class Topology:
    """Every part of a running scale-out deployment."""

    group: ProcessGroup
    workdir: Path
    profile: Profile
    certs: CertificateSet
    backend: Backend
    ring: ReceiveHashring
    gateways: list[Gateway]
    nodes: dict[str, Node]
    watcher: GatewayWatcher
    services: list[Service]
    model_url: str
    env: dict[str, str]
    queries: Queries

    def gateway_by_address(self, address: str) -> Gateway:
        return next(g for g in self.gateways if g.address == address)

    @property
    def live_gateways(self) -> list[Gateway]:
        return [g for g in self.gateways if g.killed_at is None]

    @property
    def live_ingestors(self) -> list[int]:
        return [n for n, i in enumerate(self.ring.ingestors) if i.process.popen.poll() is None]


class UnsupportedTopology(ValueError):
    """A profile the scale-out topology cannot run (its backend is not Thanos)."""


def check_scale_out_supported(profile: Profile) -> None:
    kind = profile.data["backend"]["kind"]
    if kind != "thanos":
        raise UnsupportedTopology(
            f"{profile.source}: --topology scale-out needs a thanos profile (its backend is a Thanos Receive "
            f"hashring), got backend.kind {kind}; use --profile thanos or a profile that extends it"
        )


def agent_profile(deployment: LocalDeployment, gateways: list[str]) -> Profile:
    """An agent's deployment routing to ``gateways`` (what the watcher renders again when they change)."""
    data = copy.deepcopy(deployment.profile.data)
    data["tiers"]["gateways"] = list(gateways)
    return Profile(deployment.profile.name, deployment.profile.source, data)


def service_metric_exporter(deployment: LocalDeployment) -> OTLPMetricExporter:
    """The OTLP exporter a service's library builds (tokenlat.configure), to put the export gate in front of: the
    same endpoint and TLS, and cumulative counters as the library asks for."""
    cumulative = {kind: AggregationTemporality.CUMULATIVE for kind in (Counter, ObservableCounter)}
    tls = deployment.client_tls or TLSFiles()
    return OTLPMetricExporter(
        endpoint=deployment.otlp_endpoint,
        preferred_temporality=cumulative,  # type: ignore[arg-type]
        **tls.grpc_options(),  # type: ignore[arg-type]
    )


@contextmanager
def running_topology(profile: Profile, settings: VerifySettings, workdir: Path, stages: Stages) -> Iterator[Topology]:
    """Everything up, every service ready and exporting; stopped however the block ends."""
    check_scale_out_supported(profile)
    profile = without_traces(profile)
    with ProcessGroup() as group, stopping.on_stop(group.terminate), ExitStack() as stack:
        stopping.on_give_up(group.kill)
        certs = make_certificates(workdir / "certs")
        started = stages.begin(
            f"starting the Thanos Receive hashring: {INGESTORS} ingestors, a router (replication factor "
            f"{REPLICATION_FACTOR}), Query"
        )
        backend, ring = start_thanos_hashring_backend(group, workdir, profile.data, certs)
        stages.end(started, f"router at {ring.remote_write_url}, Query at {ring.query_url}")

        started = stages.begin(f"rendering profile {profile.name} for {GATEWAYS} gateways and {len(NODES)} agents")
        salt = secrets.token_hex(16)
        env = {profile.data["deidentification"]["salt_env"]: salt, **backend.env}
        gateway_endpoints = [CollectorEndpoints.pick() for _ in range(GATEWAYS)]
        gateway_configs = []
        for n, endpoints in enumerate(gateway_endpoints):
            subdir = workdir / f"gateway-{n}"
            subdir.mkdir()
            deployment = local_deployment(profile, backend, endpoints, certs, subdir)
            gateway_configs.append(render_collector_config(deployment.profile, "gateway"))
        addresses = [e.otlp_grpc for e in gateway_endpoints]
        node_deployments = {}
        for name in NODES:
            endpoints = CollectorEndpoints.pick()
            subdir = workdir / name
            subdir.mkdir()
            node_deployments[name] = (endpoints, local_deployment(profile, backend, endpoints, certs, subdir))
        first_agent = node_deployments[NODES[0]][1]
        validate_config(gateway_configs[0])
        validate_config(render_collector_config(agent_profile(first_agent, addresses), "agent"))
        stages.end(started, "a gateway's and an agent's config validated by the Collector")

        started = stages.begin(f"starting {GATEWAYS} gateways")
        gateways = []
        for n, (config, endpoints) in enumerate(zip(gateway_configs, gateway_endpoints, strict=True)):
            collector = start_collector(group, workdir / f"gateway-{n}", config, endpoints, env=env)
            gateways.append(Gateway(n, collector, endpoints))
        stages.end(started, ", ".join(g.address for g in gateways))

        started = stages.begin(f"starting {len(NODES)} agents and the gateway watcher")
        nodes = {}
        for name, (endpoints, deployment) in node_deployments.items():

            def render(live: list[str], deployment: LocalDeployment = deployment) -> str:
                return render_collector_config(agent_profile(deployment, live), "agent")

            collector = start_collector(group, workdir / name, render(addresses), endpoints, env=env)
            agent = Agent(name, collector.process, workdir / name / "collector.yaml", render)
            nodes[name] = Node(name, agent, endpoints, deployment)
        health = {g.address: f"http://{g.endpoints.health}/" for g in gateways}
        watcher = stack.enter_context(GatewayWatcher(health, [n.agent for n in nodes.values()]))
        stages.end(started, ", ".join(f"{n.name} at {n.endpoints.otlp_grpc}" for n in nodes.values()))

        started = stages.begin(f"starting the synthetic model server and {len(SERVICES)} instrumented services")
        server = start_synthetic(group, workdir, synthetic_args(settings))
        histogram = histogram_kind(profile, settings)
        services = []
        for node, name in SERVICES:
            deployment = nodes[node].deployment
            gate = ExportGate(service_metric_exporter(deployment), name)
            # A stop request must not leave a service's exporter thread held at its gate.
            stack.enter_context(stopping.on_stop(gate.release))
            telemetry = service_telemetry(
                deployment, settings.export_interval, histogram, service_name=name, metric_exporter=gate
            )
            services.append(Service(name, node, gate, telemetry))
        stack.callback(shut_down_services, services)
        stages.end(started, ", ".join(f"{s.name} on {s.node}" for s in services))
        yield Topology(
            group=group,
            workdir=workdir,
            profile=profile,
            certs=certs,
            backend=backend,
            ring=ring,
            gateways=gateways,
            nodes=nodes,
            watcher=watcher,
            services=services,
            model_url=server.url,
            env=env,
            queries=queries_for(profile, histogram),
        )


def shut_down_services(services: Sequence[Service]) -> None:
    """Release every gate and flush every service (its last export), unless the run is being stopped: the agents
    are then going away, and the export would only wait for its timeout."""
    for service in services:
        service.gate.release()
    if stopping.requested():
        return
    for service in services:
        service.shutdown()
