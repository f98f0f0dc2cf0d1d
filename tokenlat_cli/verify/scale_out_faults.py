"""The scale-out run's faults and the checkpoints between them, and what the processes say about themselves.

A checkpoint holds every service's exports at their gates, lets what is on the way arrive, then has each service
export once, alone, reading each gateway's accepted points before and after (which gateway took that service's
data), and compares each service's count in Query with what its export carried. The receivers' refusals (TSDB
counters, refusal log lines, the router's answers) are read at each step, so that they can be told apart by window.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from tokenlat import semconv
from tokenlat_cli import stopping
from tokenlat_cli.verify.gateway_discovery import Reroute
from tokenlat_cli.verify.own_metrics import Sample, scrape, total
from tokenlat_cli.verify.polling import poll, wait_until
from tokenlat_cli.verify.scale_out_topology import Gateway, Node, Service, Topology
from tokenlat_cli.verify.services import start_collector

#: The ingestor the first fault kills (its replica label "2"; the router keeps its quorum with "0" and "1").
KILLED_INGESTOR = 2
#: How long a single service export may take: the OTLP exporter's own timeout (10 s) over its retries, and margin.
EXPORT_TIMEOUT = 30.0
#: How long a step of the faults may take before the run reports it as failed (a liveness bound, not a timing).
STEP_TIMEOUT = 90.0
#: The Collector's OTLP receiver counter a gateway's routing is read from.
ACCEPTED_POINTS = "otelcol_receiver_accepted_metric_points"
#: What an ingestor's TSDB counts as refused samples (out of order, out of bounds, too old); per tenant and type.
REFUSED_SAMPLES = (
    "prometheus_tsdb_out_of_order_samples_total",
    "prometheus_tsdb_out_of_bound_samples_total",
    "prometheus_tsdb_too_old_samples_total",
)
#: What an ingestor logs when it refuses samples of a write, duplicates (same timestamp, other value) included,
#: which no TSDB counter counts (pkg/receive/writer_errors.go).
REFUSED_LOG_LINE = "Error on ingesting"
#: The metric whose series the gap and continuity of the moved services are read from.
DURATION = semconv.prometheus_name(semconv.DURATION_SPEC)


def counter(samples: Sequence[Sample], name: str, **labels: str) -> float:
    """A counter whichever way the exporter names it (the Collector's Prometheus reader may add ``_total``)."""
    return total(samples, name, **labels) + total(samples, f"{name}_total", **labels)


def accepted_points(gateways: Sequence[Gateway]) -> dict[str, float]:
    """Each gateway's OTLP receiver's accepted metric points so far, by its address."""
    return {g.address: counter(scrape(g.collector.telemetry_url), ACCEPTED_POINTS) for g in gateways}


@dataclass(frozen=True)
class Refusals:
    """What the receivers refused up to a moment: per live ingestor, refused samples by TSDB counter and sample type,
    and refusal lines in its log (duplicates among them); the router's remote-write answers by status class."""

    taken: float
    tsdb: dict[int, dict[str, float]]
    logged: dict[int, int]
    router: dict[str, float]

    def since(self, earlier: Refusals) -> dict[str, float]:
        """What was refused between ``earlier`` and this moment, counting the ingestors alive at both."""
        both = [n for n in self.tsdb if n in earlier.tsdb]
        kinds = sorted({kind for n in both for kind in self.tsdb[n]})
        counts = {
            f"tsdb_{kind}": sum(self.tsdb[n].get(kind, 0) - earlier.tsdb[n].get(kind, 0) for n in both)
            for kind in kinds
        }
        return {
            "tsdb_refused_samples": sum(counts.values()),
            **{kind: n for kind, n in counts.items() if n},
            "ingestor_refusal_log_lines": sum(self.logged[n] - earlier.logged[n] for n in both),
            "router_conflicts_409": self.router.get("409", 0) - earlier.router.get("409", 0),
            "router_errors_5xx": self.router.get("5xx", 0) - earlier.router.get("5xx", 0),
            "router_writes_2xx": self.router.get("2xx", 0) - earlier.router.get("2xx", 0),
        }


def refusals(topology: Topology) -> Refusals:
    """What the live ingestors and the router say they refused so far (their /metrics, the ingestors' logs)."""
    tsdb: dict[int, dict[str, float]] = {}
    logged = {}
    for n in topology.live_ingestors:
        ingestor = topology.ring.ingestors[n]
        samples = scrape(f"{ingestor.http_url}/metrics")
        tsdb[n] = {}
        for sample in samples:
            if sample.name in REFUSED_SAMPLES:
                # prometheus_tsdb_out_of_order_samples_total{type="histogram"} -> out_of_order_histogram
                kind = sample.name.removeprefix("prometheus_tsdb_").removesuffix("_samples_total")
                kind = f"{kind}_{sample.labels.get('type', 'float')}"
                tsdb[n][kind] = tsdb[n].get(kind, 0) + sample.value
        logged[n] = ingestor.process.log_path.read_text(encoding="utf-8", errors="replace").count(REFUSED_LOG_LINE)
    router = scrape(f"{topology.ring.router.http_url}/metrics")
    answers = [s for s in router if s.name == "http_requests_total" and s.labels.get("handler") == "receive"]
    by_class: dict[str, float] = {}
    for sample in answers:
        code = sample.labels.get("code", "")
        by_class[f"{code[:1]}xx"] = by_class.get(f"{code[:1]}xx", 0) + sample.value
        if code == "409":
            by_class["409"] = by_class.get("409", 0) + sample.value
    return Refusals(time.time(), tsdb, logged, by_class)


@dataclass
class Checkpoint:
    """Every service exported once, alone, while the others waited: where its data went and whether Query has it."""

    name: str
    started: float
    #: service -> gateway address -> the points that gateway accepted while the service exported alone.
    routes: dict[str, dict[str, float]] = field(default_factory=dict)
    #: service -> the data points of its export, and the requests it counted.
    points: dict[str, int] = field(default_factory=dict)
    requests: dict[str, int] = field(default_factory=dict)
    #: service -> the request count Query answered for it (None: no data).
    answered: dict[str, float | None] = field(default_factory=dict)
    #: receive_replica -> the requests that ingestor holds (Query without deduplication).
    per_replica: dict[str, float] = field(default_factory=dict)
    ended: float = 0.0

    def gateway_of(self, service: str) -> str | None:
        """The one gateway the service's export reached, with all its points; None when that is not so."""
        reached = {g: n for g, n in self.routes.get(service, {}).items() if n > 0}
        if len(reached) != 1:
            return None
        (gateway, n), expected = next(iter(reached.items())), self.points.get(service)
        return gateway if n == expected else None


def wait_quiet(read: Callable[[], dict[str, float]], quiet: float, timeout: float, what: str) -> dict[str, float]:
    """``read()`` once it has not changed for ``quiet`` seconds; TimeoutError naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: still changing after {timeout:g}s (last {last})")
        stopping.sleep(0.1)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
    return last


def checkpoint(topology: Topology, name: str, batch_timeout: float, deadline: float) -> Checkpoint:
    """Shut every service's export gate, let what is on the way arrive, then let each service export once, alone,
    and read each gateway's accepted points before and after; then compare each service's count in Query with the
    count its export carried (the latest it sent: nothing newer can arrive while the gates are shut)."""
    result = Checkpoint(name, time.time())
    services = topology.services
    try:
        for service in services:
            service.gate.shut(EXPORT_TIMEOUT)
        live = topology.live_gateways
        # An export already in an agent's batch reaches its gateway within the batch timeout.
        wait_quiet(lambda: accepted_points(live), 1.5 * batch_timeout, STEP_TIMEOUT, "gateways' accepted points")
        for service in services:
            before = accepted_points(live)
            record = service.gate.let_one_through(EXPORT_TIMEOUT)
            if not record.ok:
                raise RuntimeError(f"checkpoint {name}: {service.name}'s export failed")
            after = poll(
                lambda: accepted_points(live),
                lambda now, before=before, points=record.points: sum(now.values()) - sum(before.values()) >= points,
                batch_timeout + 10.0,
                0.05,
            )
            result.routes[service.name] = {g: after[g] - before[g] for g in after}
            result.points[service.name] = record.points
            result.requests[service.name] = record.requests
        client = topology.backend.query
        for service in services:
            expr = topology.queries.count(semconv.DURATION_SPEC, f'job="{service.name}"')
            expected = result.requests[service.name]
            result.answered[service.name] = poll(
                lambda expr=expr: client.scalar(expr), lambda v, e=expected: v == e, deadline
            )
        by_replica = f"histogram_count(sum by (receive_replica) ({DURATION}))"
        for series in client.query(by_replica, dedup="false"):
            result.per_replica[series["metric"].get("receive_replica", "?")] = float(series["value"][1])
    finally:
        for service in services:
            service.gate.open()
    result.ended = time.time()
    return result


def wait_for_exports(services: Sequence[Service], since: float, count: int, what: str) -> float:
    """Wait until each of ``services`` has exported successfully ``count`` times since ``since``; the time then."""
    wait_until(
        lambda: min(len(s.ok_exports_since(since)) for s in services),
        lambda n: n >= count,
        STEP_TIMEOUT,
        what,
        0.1,
    )
    return time.time()


def steady_exports(batch_timeout: float, export_interval: float) -> int:
    """Fresh exports every service must make after a checkpoint before the next fault, so that the samples before
    the fault are evenly spaced over the window the gap bound assumes (two batch timeouts and an export interval
    still in flight when a gateway dies): the export a checkpoint held carries data collected during it, seconds old,
    and would otherwise be the last sample before a gap that then looks longer than the fault made it."""
    return math.ceil((2 * batch_timeout + export_interval) / export_interval) + 1


def wait_after_checkpoint(services: Sequence[Service], cp: Checkpoint, count: int, interval: float) -> None:
    """``count`` fresh exports of every service after ``cp``: not counting the export the checkpoint held, which
    passes its gate as the checkpoint ends."""
    wait_for_exports(services, cp.ended + interval / 2, count, f"every service exporting after {cp.name}")


def last_exports(topology: Topology, batch_timeout: float) -> None:
    """Each service's last export (its shutdown), alone in the agents' batches.

    A service's last export comes right after its previous one, at whatever phase of the export interval it stops.
    When both meet in one agent batch, the agent's load_balancing exporter merges them into one resource, the
    gateway's guard (aggregate_on_attributes) can emit the series' two points in either order, and the remote-write
    exporter sorts float samples but not histogram samples: Receive then drops the older of the two (counted in
    prometheus_tsdb_out_of_order_samples_total, no error). Nothing is lost (the newer one carries the totals), but
    the receivers' refusals would no longer say anything about the topology. So: hold the next export, let what was
    sent reach the gateways, discard the held export, and shut the service down, whose last export then goes alone
    (docs/scale-out.md, "A finding")."""
    services = topology.services
    for service in services:
        service.gate.shut(EXPORT_TIMEOUT)
    live = topology.live_gateways
    wait_quiet(lambda: accepted_points(live), 1.5 * batch_timeout, STEP_TIMEOUT, "gateways' accepted points")
    for service in services:
        service.gate.discard_held(EXPORT_TIMEOUT)
        service.shutdown()


@dataclass
class GatewayFault:
    """The gateway killed, when, how the watcher rerouted, and the services that moved and stayed."""

    victim: Gateway
    killed: float
    reroute: Reroute
    moved: list[str]
    stayed: list[str]


@dataclass
class AgentRestart:
    """An agent's restart (wall-clock times): stopped (SIGTERM), exited, healthy again, its services exporting."""

    node: str
    stopped: float
    exited: float
    healthy: float
    recovered: float
    #: The node's services' exports that started while the agent was down (each failed at first and was retried by
    #: the SDK): service -> (seconds it took, whether it succeeded in the end).
    during_downtime: dict[str, list[tuple[float, bool]]]
    #: The node's services' exports that failed for good from the stop on.
    failed_exports: int


def kill_ingestor(topology: Topology, index: int) -> float:
    """SIGKILL, not started again; the time it was dead."""
    ingestor = topology.ring.ingestors[index]
    ingestor.process.signal_group(signal.SIGKILL)
    ingestor.process.popen.wait(timeout=10)
    return time.time()


def kill_gateway(topology: Topology, gateway: Gateway) -> float:
    """SIGKILL, not started again; the time it was dead."""
    gateway.collector.process.signal_group(signal.SIGKILL)
    gateway.collector.process.popen.wait(timeout=10)
    gateway.killed_at = time.time()
    return gateway.killed_at


def restart_agent(topology: Topology, node: Node, hold: int) -> AgentRestart:
    """SIGTERM (the Collector drains and exits), then the same agent again on the same ports, with the config the
    watcher keeps (the live gateways). The watcher does not reroute meanwhile."""
    services = [s for s in topology.services if s.node == node.name]
    with topology.watcher.replacing(node.name) as agent:
        stopped = time.time()
        agent.process.stop()
        exited = time.time()
        # Down until each of the node's services has tried an export meanwhile (up to an export interval): a restart
        # in production (a rescheduled pod) takes at least that, and the fault is meant to make the SDK retry.
        wait_until(
            lambda: min(s.gate.last_started for s in services),
            lambda started: started > exited,
            STEP_TIMEOUT,
            f"{node.name}'s services trying to export while its agent is down",
            0.02,
        )
        workdir = topology.workdir / f"{node.name}-restarted"
        workdir.mkdir()
        collector = start_collector(
            topology.group, workdir, topology.watcher.render(agent), node.endpoints, env=topology.env
        )
        healthy = time.time()
        agent.process = collector.process
        agent.config_path = workdir / "collector.yaml"
    recovered = wait_for_exports(services, healthy, hold, f"{node.name}'s services exporting to the restarted agent")
    during = {
        s.name: [(r.ended - r.started, r.ok) for r in s.gate.snapshot() if exited <= r.started <= healthy]
        for s in services
    }
    failed = sum(1 for s in services for r in s.gate.snapshot() if not r.ok and r.ended >= stopped)
    return AgentRestart(node.name, stopped, exited, healthy, recovered, during, failed)
