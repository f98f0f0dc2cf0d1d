"""`tokenlat verify --topology scale-out`: the thanos profile's path shaped as production scales it, proven while
its nodes are killed.

::

    services         agents, one a node          gateways            Thanos Receive hashring           reader
    svc-a1 ─┐                                 ┌─► gateway 0 ─┐                     ┌─► ingestor 0 ─┐
    svc-a2 ─┴─OTLP─► agent node-a ─┐          │              │  remote    router   │               │
                                   ├─ lb by ──┼─► gateway 1 ─┼─ write ──► (RF 3, ──┼─► ingestor 1 ─┼─► Query (dedup
    svc-b1 ─┐                      │ resource │              │            quorum 2)│               │   receive_replica)
    svc-b2 ─┴─OTLP─► agent node-b ─┘          └─► gateway 2 ─┘                     └─► ingestor 2 ─┘
                       static resolver kept by the gateway watcher (health checks, config rewrite, SIGHUP)

The services are the library in this process (four Telemetry instances, each its own ``service.name``, the load
spread over them as a balancer would); every other box is a real process: the ocb-built Collector with the configs
``render_collector_config(profile, "agent" | "gateway")`` renders, Thanos v0.42.4. The gateway watcher
(gateway_discovery.py) stands in for the load_balancing exporter's k8s or dns resolver.

While the load runs, three faults, one after the other, each followed by a checkpoint where every service's data is
compared, exactly, with what Query answers:

1. an ingestor is killed (SIGKILL): the router still has its write quorum (2 of 3), so nothing may be lost, and
   each surviving ingestor must hold every request;
2. the gateway that most services route to is killed (SIGKILL) and not restarted: the watcher drops it, the agents
   reload with the other two, and its services' series move. Services export cumulative totals, so their counts are
   exact again after the move; what is lost is the samples the dead gateway held and those sent to it before the
   agents reloaded: a gap in the moved series, measured from their samples in Query and held to the bound
   ``2 batch timeouts + (kill to reloaded) + 2 export intervals`` (docs/scale-out.md);
3. an agent is stopped (SIGTERM) and started again on the same ports: its services' exports fail meanwhile, the SDK
   retries them, and the next export carries the totals.

At each checkpoint the services export one at a time, and each gateway's own telemetry (its OTLP receiver's accepted
points) shows which gateway that service's data reached: one, and after the gateway fault one other for the services
that moved and the same one for the rest. At the end the whole load is judged as the single-Collector verify judges
it (runner.compare_with_truth: exact counts, quantiles against the truth and against what was sent).
"""

from __future__ import annotations

import dataclasses
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tokenlat_cli import stopping
from tokenlat_cli.profiles import Profile
from tokenlat_cli.verify.load import LoadResult
from tokenlat_cli.verify.own_metrics import Sample, ScrapeError, scrape
from tokenlat_cli.verify.processes import ServiceError
from tokenlat_cli.verify.promql import PromQLError
from tokenlat_cli.verify.report import Report
from tokenlat_cli.verify.runner import (
    Echo,
    Stages,
    VerifySettings,
    compare_with_truth,
    drive_load,
    histogram_kind,
    tenant_check,
)
from tokenlat_cli.verify.scale_out_checks import (
    checkpoint_checks,
    detection_check,
    dropped_for,
    gap_checks,
    gateway_send_failures,
    ingestor_fault_checks,
    mid_load_check,
    refusal_checks,
    restart_check,
    route_text,
    routing_checks,
    series_history,
)
from tokenlat_cli.verify.scale_out_faults import (
    KILLED_INGESTOR,
    STEP_TIMEOUT,
    AgentRestart,
    Checkpoint,
    GatewayFault,
    Refusals,
    checkpoint,
    kill_gateway,
    kill_ingestor,
    last_exports,
    refusals,
    restart_agent,
    steady_exports,
    wait_after_checkpoint,
    wait_for_exports,
)
from tokenlat_cli.verify.scale_out_topology import Gateway, Service, Topology, running_topology
from tokenlat_cli.verify.statistics import merge_recorded, recorded_histograms

#: The node whose agent the third fault restarts.
RESTARTED_NODE = "node-a"


@dataclass(frozen=True)
class ScaleOutSettings:
    """What only the scale-out run takes (the load's settings are verify's own, VerifySettings)."""

    #: Successful exports of every service after each step before the next one: how long the load runs on between
    #: faults, in export intervals.
    hold_exports: int = 3


def go_duration_seconds(text: str) -> float:
    """A Go duration as the profiles write them ("1s", "200ms", "1m30s") in seconds."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * units[u] for n, u in parts)


class LoadThread:
    """The load in a thread of its own: the main thread must stay free to start processes (a restarted agent: only
    the main thread may, see processes.ProcessGroup.start) and to run the faults while the load goes on."""

    def __init__(self, url: str, settings: VerifySettings, services: Sequence[Service]) -> None:
        self._more = threading.Event()
        self._more.set()
        self.result: LoadResult | None = None
        self.error: BaseException | None = None

        def run() -> None:
            try:
                self.result = drive_load(
                    url,
                    settings,
                    None,
                    lambda line: None,
                    services=[s.telemetry.metrics for s in services],
                    keep_going=self._more.is_set,
                )
            except BaseException as exc:  # handed to the main thread in finish()
                self.error = exc

        self.thread = threading.Thread(target=run, name="tokenlat-scale-out-load", daemon=True)
        self.thread.start()

    @property
    def running(self) -> bool:
        return self.thread.is_alive()

    def stop(self) -> None:
        """No new requests from now on."""
        self._more.clear()

    def finish(self) -> LoadResult:
        """No new requests; the ones in flight end; the load's result."""
        self._more.clear()
        while self.thread.is_alive():
            self.thread.join(0.2)
            stopping.checkpoint()
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class ScaleOutStages(Stages):
    """verify's progress lines, remembering the stage under way: a fault step that fails names it."""

    current = ""

    def begin(self, text: str) -> float:
        self.current = text
        return super().begin(text)


def run_scale_out(
    profile: Profile,
    settings: VerifySettings,
    workdir: Path,
    echo: Echo,
    scale: ScaleOutSettings | None = None,
) -> Report:
    scale = scale or ScaleOutSettings()
    run_started = time.time()
    settings = dataclasses.replace(settings, histogram=histogram_kind(profile, settings))
    report = Report(
        profile=profile.name,
        settings={**asdict(settings), **asdict(scale), "topology": "scale-out", "buckets": str(profile.layout)},
    )
    stages = ScaleOutStages(echo, 15)
    with running_topology(profile, settings, workdir, stages) as topology:
        try:
            faults = _run_faults(topology, settings, scale, stages)
        except (TimeoutError, RuntimeError, ScrapeError, PromQLError) as exc:
            if isinstance(exc, ServiceError):
                raise
            raise ServiceError(f"scale-out, {stages.current}: {exc}") from exc
        _judge(report, topology, settings, faults, run_started, stages)
        stages.begin("stopping services")
    report.measurements["run_seconds"] = round(time.time() - run_started, 1)
    return report


@dataclass
class FaultRun:
    """What the load and the three faults left to judge."""

    load: LoadResult
    #: Whether the load was still running when each fault came (and when the run ended it).
    mid_load: dict[str, bool]
    load_started: float
    ingestor_killed: float
    router_before: list[Sample]
    router_after: list[Sample]
    checkpoints: list[Checkpoint]
    gateway_fault: GatewayFault
    restart: AgentRestart
    marks: dict[str, Refusals]
    batch_timeout: float


def _run_faults(topology: Topology, settings: VerifySettings, scale: ScaleOutSettings, stages: Stages) -> FaultRun:
    """The load, and the faults one after the other while it runs, each followed by a checkpoint."""
    services = topology.services
    names = {g.address: g.name for g in topology.gateways}
    batch_timeout = go_duration_seconds(topology.profile.data["pipeline"]["batch"]["timeout"])
    hold = scale.hold_exports
    steady = steady_exports(batch_timeout, settings.export_interval)
    started = stages.begin(
        f"streaming chat completions, {settings.concurrency} at a time, over {len(services)} services until the "
        "faults are done"
    )
    marks = {"start": refusals(topology)}
    load_started = time.time()
    load = LoadThread(topology.model_url, settings, services)
    mid_load: dict[str, bool] = {}
    try:
        wait_for_exports(services, load_started, hold, "every service exporting")
        stages.end(started, f"every service has exported {hold} times")

        started = stages.begin(f"fault 1: killing ingestor {KILLED_INGESTOR} (SIGKILL) mid-load")
        router_before = scrape(f"{topology.ring.router.http_url}/metrics")
        marks["ingestor killed"] = refusals(topology)
        mid_load["ingestor killed"] = load.running
        ingestor_killed = kill_ingestor(topology, KILLED_INGESTOR)
        wait_for_exports(services, ingestor_killed, hold, "every service exporting after the ingestor fault")
        router_after = scrape(f"{topology.ring.router.http_url}/metrics")
        stages.end(started, f"the load ran on for {hold} exports of every service")

        cp1 = _checkpoint_stage(
            topology, stages, 1, f"after ingestor {KILLED_INGESTOR} was killed", batch_timeout, settings, names
        )

        victim = _victim(topology, cp1)
        moved = [s.name for s in services if cp1.gateway_of(s.name) == victim.address]
        started = stages.begin(f"fault 2: killing {victim.name} (SIGKILL) mid-load; {len(moved)} services route to it")
        # The exports the checkpoint held go out first, with data collected during it: the load runs on in steady
        # state for a while before the kill, so that the gap measured across it is the fault's alone.
        wait_after_checkpoint(services, cp1, max(hold, steady), settings.export_interval)
        marks["gateway killed"] = refusals(topology)
        mid_load["gateway killed"] = load.running
        killed = kill_gateway(topology, victim)
        reroute = topology.watcher.wait_for_reroute(1, STEP_TIMEOUT)
        if reroute.errors:
            raise RuntimeError(f"the agents did not reload: {'; '.join(reroute.errors)}")
        wait_for_exports(services, reroute.done, hold, "every service exporting after the agents reloaded")
        marks["gateway fault over"] = refusals(topology)
        stayed = [s.name for s in services if s.name not in moved]
        fault = GatewayFault(victim, killed, reroute, moved, stayed)
        stages.end(
            started,
            f"detected {reroute.detected - killed:.2f}s after the kill, agents reloaded {reroute.reload_seconds:.2f}s "
            "after SIGHUP",
        )

        cp2 = _checkpoint_stage(topology, stages, 2, f"after {victim.name} was killed", batch_timeout, settings, names)

        started = stages.begin(f"fault 3: restarting the agent of {RESTARTED_NODE} (SIGTERM, started again) mid-load")
        wait_after_checkpoint(services, cp2, max(hold, steady), settings.export_interval)
        marks["agent stopped"] = refusals(topology)
        mid_load["agent restarted"] = load.running
        restart = restart_agent(topology, topology.nodes[RESTARTED_NODE], hold)
        wait_for_exports(services, restart.recovered, hold, "every service exporting after the agent restart")
        marks["agent fault over"] = refusals(topology)
        stages.end(
            started,
            f"down {restart.healthy - restart.stopped:.2f}s; {restart.failed_exports} exports of its services failed",
        )

        cp3 = _checkpoint_stage(
            topology, stages, 3, f"after the agent of {RESTARTED_NODE} restarted", batch_timeout, settings, names
        )

        started = stages.begin("ending the load and flushing the services")
        mid_load["load ended"] = load.running
        marks["checkpoint 3 over"] = refusals(topology)
        result = load.finish()
    finally:
        load.stop()
    marks["load ended"] = refusals(topology)
    last_exports(topology, batch_timeout)
    marks["services flushed"] = refusals(topology)
    result.recorded = merge_recorded([recorded_histograms(s.telemetry.metrics.store) for s in services])
    stages.end(started, f"{len(result.truths)} succeeded, {len(result.failures)} failed; metrics flushed")
    return FaultRun(
        result,
        mid_load,
        load_started,
        ingestor_killed,
        router_before,
        router_after,
        [cp1, cp2, cp3],
        fault,
        restart,
        marks,
        batch_timeout,
    )


def _checkpoint_stage(
    topology: Topology,
    stages: Stages,
    number: int,
    name: str,
    batch_timeout: float,
    settings: VerifySettings,
    names: Mapping[str, str],
) -> Checkpoint:
    started = stages.begin(f"checkpoint {number}: each service exports alone; its gateway, and its count in Query")
    cp = checkpoint(topology, name, batch_timeout, settings.deadline)
    stages.end(started, route_text(cp, names, [s.name for s in topology.services]))
    return cp


def _judge(
    report: Report, topology: Topology, settings: VerifySettings, run: FaultRun, run_started: float, stages: Stages
) -> None:
    started = stages.begin(f"judging the data in Query (up to {settings.deadline:.0f}s)")
    load = run.load
    issued = len(load.truths) + len(load.failures)
    client = topology.backend.query
    # The requests the load issued, however many the faults took: the expected count of the usual checks.
    compare_with_truth(report, load, dataclasses.replace(settings, requests=issued), client, topology.profile)
    report.checks.append(tenant_check(topology.backend, len(load.truths), topology.queries))
    run.marks["end"] = refusals(topology)
    ended = time.time()
    live_replicas = [str(n) for n in topology.live_ingestors]
    report.checks.extend(ingestor_fault_checks(topology, run.router_before, run.router_after, live_replicas))
    for cp in run.checkpoints:
        report.checks.extend(checkpoint_checks(cp, live_replicas))
    names = {g.address: g.name for g in topology.gateways}
    fault = run.gateway_fault
    report.checks.extend(routing_checks(run.checkpoints[0], run.checkpoints[1], fault, names))
    report.checks.append(detection_check(fault))
    histories = {s: series_history(client, s, run.load_started, ended, fault.killed) for s in fault.moved}
    rows, gaps = gap_checks(fault, histories, run.batch_timeout, settings.export_interval)
    report.checks.extend(rows)
    report.checks.append(restart_check(run.restart, run.checkpoints[2], topology))
    windows = _windows(run.marks)
    fault_windows = ("gateway fault", "agent fault")
    report.checks.extend(refusal_checks(windows, fault_windows))
    for name in fault_windows:
        counts = windows[name]
        report.notes.append(
            f"during the {name} (not judged): TSDB refused {counts['tsdb_refused_samples']:g} samples, refusal log "
            f"lines {counts['ingestor_refusal_log_lines']:g}, router 409 {counts['router_conflicts_409']:g}, 5xx "
            f"{counts['router_errors_5xx']:g}, 2xx {counts['router_writes_2xx']:g}"
        )
    report.checks.append(gateway_send_failures(topology))
    report.checks.append(mid_load_check(run.mid_load))
    report.notes.append(
        "traces are not part of the scale-out run (the load's traces are one span each): the agents' routing of "
        "traces by trace id is tested on its own, through two gateways (tests/e2e/test_traces.py)"
    )
    for failure in load.failures[:5]:
        report.notes.append(f"failed {failure}")
    report.measurements.update(_measurements(topology, run, windows, gaps, run_started, issued))
    stages.end(started)


def _victim(topology: Topology, cp: Checkpoint) -> Gateway:
    """The gateway the most services route to (the first such), so that the fault moves as many as it can."""
    counts = {g.address: 0 for g in topology.live_gateways}
    for service in topology.services:
        gateway = cp.gateway_of(service.name)
        if gateway in counts:
            counts[gateway] += 1
    return topology.gateway_by_address(max(counts, key=lambda a: counts[a]))


def _windows(marks: Mapping[str, Refusals]) -> dict[str, dict[str, float]]:
    spans = (
        ("before the faults", "start", "ingestor killed"),
        ("ingestor fault to gateway fault", "ingestor killed", "gateway killed"),
        ("gateway fault", "gateway killed", "gateway fault over"),
        ("gateway fault over to agent restart", "gateway fault over", "agent stopped"),
        ("agent fault", "agent stopped", "agent fault over"),
        ("after the faults, checkpoint 3", "agent fault over", "checkpoint 3 over"),
        ("end of the load", "checkpoint 3 over", "load ended"),
        ("the services' last export", "load ended", "services flushed"),
        ("judging", "services flushed", "end"),
    )
    return {name: marks[end].since(marks[start]) for name, start, end in spans}


def _measurements(
    topology: Topology,
    run: FaultRun,
    windows: Mapping[str, Mapping[str, float]],
    gaps: Mapping[str, Any],
    run_started: float,
    issued: int,
) -> dict[str, Any]:
    names = {g.address: g.name for g in topology.gateways}
    cp1, cp2, cp3 = run.checkpoints
    fault, restart = run.gateway_fault, run.restart
    reroute = fault.reroute

    def routes(cp: Checkpoint) -> dict[str, str | None]:
        return {s: names.get(cp.gateway_of(s) or "") for s in cp.routes}

    def requests(cp: Checkpoint) -> dict[str, Any]:
        return {"exported": cp.requests, "in_query": cp.answered, "per_replica": cp.per_replica}

    def at(moment: float) -> float:
        return round(moment - run_started, 2)

    return {
        "topology": {
            "services": [f"{s.name}@{s.node}" for s in topology.services],
            "gateways": [g.address for g in topology.gateways],
            "ingestors": [i.grpc_address for i in topology.ring.ingestors],
            "replication_factor": topology.ring.replication_factor,
        },
        "requests_issued": issued,
        "requests_succeeded": len(run.load.truths),
        "faults": {
            "ingestor_killed": {
                "ingestor": KILLED_INGESTOR,
                "at_seconds": at(run.ingestor_killed),
                "requests_after": requests(cp1),
            },
            "gateway_killed": {
                "gateway": fault.victim.name,
                "at_seconds": at(fault.killed),
                "detection_seconds": round(reroute.detected - fault.killed, 3),
                "reload_seconds": round(reroute.reload_seconds, 3),
                "kill_to_reloaded_seconds": round(reroute.done - fault.killed, 3),
                "moved": fault.moved,
                "stayed": fault.stayed,
                # What the agents' exporters held for the dead gateway when they reloaded, and dropped.
                "points_dropped_by_agents": sum(
                    dropped_for(log.read_text(encoding="utf-8", errors="replace"), fault.victim.address)
                    for log in topology.workdir.glob("node-*/collector.log")
                ),
                "routes_before": routes(cp1),
                "routes_after": routes(cp2),
                "gaps": gaps,
                "requests_after": requests(cp2),
            },
            "agent_restarted": {
                "node": restart.node,
                "at_seconds": at(restart.stopped),
                "down_seconds": round(restart.healthy - restart.stopped, 3),
                "failed_exports": restart.failed_exports,
                "exports_during_downtime": {
                    s: [{"seconds": round(t, 3), "ok": ok} for t, ok in exports]
                    for s, exports in restart.during_downtime.items()
                },
                "requests_after": requests(cp3),
            },
        },
        "refusals": windows,
    }
