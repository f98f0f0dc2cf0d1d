"""How the scale-out run judges its faults: routes, counts at the checkpoints, the gap and continuity of the moved
series against the stated bound, the receivers' refusals outside the fault windows (docs/scale-out.md)."""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tokenlat_cli.verify import checks
from tokenlat_cli.verify.checks import Check
from tokenlat_cli.verify.gateway_discovery import detection_bound
from tokenlat_cli.verify.own_metrics import Sample, scrape
from tokenlat_cli.verify.promql import PrometheusClient
from tokenlat_cli.verify.scale_out_faults import (
    DURATION,
    KILLED_INGESTOR,
    AgentRestart,
    Checkpoint,
    GatewayFault,
    counter,
)
from tokenlat_cli.verify.scale_out_topology import Topology
from tokenlat_cli.verify.thanos_hashring import write_quorum

SEND_FAILED_POINTS = "otelcol_exporter_send_failed_metric_points"


def sample_gap(timestamps: Sequence[float], at: float) -> tuple[float, float] | None:
    """The consecutive samples (before, after) with before <= ``at`` < after; None when ``at`` is not inside."""
    ordered = sorted(timestamps)
    for before, after in itertools.pairwise(ordered):
        if before <= at < after:
            return before, after
    return None


def gap_bound(batch_timeout: float, kill_to_reloaded: float, export_interval: float) -> float:
    """The longest gap the design allows in a moved series (docs/scale-out.md): the samples in the agent's and the
    dead gateway's batches when it died (two batch timeouts), those sent to it until the agents reloaded (kill to
    reloaded), and one export interval on each side (the series' own spacing and the phase of its next export)."""
    return 2 * batch_timeout + kill_to_reloaded + 2 * export_interval


@dataclass(frozen=True)
class SeriesHistory:
    """A service's duration series over the run, as Query returns it."""

    series: int  # how many series Query has for it (1: the same labels throughout)
    timestamps: list[float]
    counts: list[float]
    labels_before: dict[str, str] | None
    labels_after: dict[str, str] | None

    @property
    def monotonic(self) -> bool:
        return all(b >= a for a, b in itertools.pairwise(self.counts))


def series_history(client: PrometheusClient, service: str, start: float, end: float, at: float) -> SeriesHistory:
    """The raw samples of ``service``'s duration histogram from ``start`` to ``end`` (a range selector: every
    sample, deduplicated across the ingestors), and its labels just before and after ``at``."""
    window = math.ceil(end - start) + 1
    result = client.query(f'{DURATION}{{job="{service}"}}[{window}s]', time=f"{end:.3f}")
    timestamps: list[float] = []
    counts: list[float] = []
    if len(result) == 1:
        points = result[0].get("histograms") or []
        timestamps = [float(ts) for ts, _ in points]
        counts = [float(h["count"]) for _, h in points]

    def labels(when: float) -> dict[str, str] | None:
        found = client.query(f'{DURATION}{{job="{service}"}}', time=f"{when:.3f}")
        return dict(found[0]["metric"]) if len(found) == 1 else None

    return SeriesHistory(len(result), timestamps, counts, labels(at - 0.5), labels(end))


def route_text(checkpoint: Checkpoint, names: Mapping[str, str], services: Sequence[str]) -> str:
    """service->gateway for each of ``services`` ("none" where its points did not all reach one gateway)."""
    return ", ".join(f"{s}->{names.get(checkpoint.gateway_of(s) or '', 'none')}" for s in services)


def routing_checks(before: Checkpoint, after: Checkpoint, fault: GatewayFault, names: Mapping[str, str]) -> list[Check]:
    """Before the gateway fault each service at exactly one gateway; after it, the moved ones at exactly one other,
    the rest where they were."""
    services = list(before.routes)
    one_before = [s for s in services if before.gateway_of(s) is not None]
    rows = [
        Check(
            "routing before the gateway fault: each service's points at exactly one gateway",
            f"{len(services)} of {len(services)}",
            f"{len(one_before)} of {len(services)}",
            None,
            "exact",
            len(one_before) == len(services),
            route_text(before, names, services) + " (each gateway's otelcol_receiver_accepted_metric_points)",
        )
    ]
    moved_ok = [s for s in fault.moved if after.gateway_of(s) not in (None, fault.victim.address)]
    rows.append(
        Check(
            f"routing after {fault.victim.name} died: its services at exactly one other gateway",
            f"{len(fault.moved)} of {len(fault.moved)}",
            f"{len(moved_ok)} of {len(fault.moved)}",
            None,
            "exact",
            bool(fault.moved) and len(moved_ok) == len(fault.moved),
            route_text(after, names, fault.moved) or "no service routed to the killed gateway",
        )
    )
    stayed_ok = [
        s
        for s in fault.stayed
        if before.gateway_of(s) not in (None, fault.victim.address) and after.gateway_of(s) == before.gateway_of(s)
    ]
    rows.append(
        Check(
            "routing after the gateway fault: the other services stayed where they were",
            f"{len(fault.stayed)} of {len(fault.stayed)}",
            f"{len(stayed_ok)} of {len(fault.stayed)}",
            None,
            "exact",
            len(stayed_ok) == len(fault.stayed),
            route_text(after, names, fault.stayed) or "every service had been on the killed gateway",
        )
    )
    return rows


def checkpoint_checks(cp: Checkpoint, live_replicas: Sequence[str]) -> list[Check]:
    """Each service's count in Query equals what it exported; each surviving ingestor holds every request."""
    expected = sum(cp.requests.values())
    answered = [cp.answered.get(s) for s in cp.requests]
    observed = None if any(a is None for a in answered) else sum(a or 0 for a in answered)
    exact = [s for s in cp.requests if cp.answered.get(s) == cp.requests[s]]
    row = checks.count_check(f"{cp.name}: requests through Query, every service exact", expected, observed)
    per_service = ", ".join(f"{s} {cp.requests[s]}/{_n(cp.answered.get(s))}" for s in cp.requests)
    detail = f"{len(exact)} of {len(cp.requests)} services exact (exported/in Query): {per_service}"
    rows = [dataclasses.replace(row, passed=row.passed and len(exact) == len(cp.requests), detail=detail)]
    held = {r: cp.per_replica.get(r) for r in live_replicas}
    complete = [r for r, n in held.items() if n == expected]
    rows.append(
        Check(
            f"{cp.name}: each surviving ingestor holds every request",
            f"{len(live_replicas)} of {len(live_replicas)} with {expected}",
            f"{len(complete)} of {len(live_replicas)}",
            None,
            "exact",
            len(complete) == len(live_replicas),
            "Query without deduplication: " + ", ".join(f"receive_replica={r} {_n(n)}" for r, n in held.items()),
        )
    )
    return rows


def _n(value: float | None) -> str:
    return "none" if value is None else f"{value:g}"


def gap_checks(
    fault: GatewayFault, histories: Mapping[str, SeriesHistory], batch_timeout: float, export_interval: float
) -> tuple[list[Check], dict[str, Any]]:
    reroute = fault.reroute
    kill_to_reloaded = reroute.done - fault.killed
    bound = gap_bound(batch_timeout, kill_to_reloaded, export_interval)
    rows, figures = [], {}
    for service in fault.moved:
        history = histories[service]
        gap = sample_gap(history.timestamps, fault.killed)
        seconds = None if gap is None else gap[1] - gap[0]
        figures[service] = {"gap_seconds": seconds, "samples": len(history.timestamps), "bound_seconds": bound}
        rows.append(
            Check(
                f"{service}: gap in its series across the move",
                f"<= {bound:.2f}s",
                None if seconds is None else round(seconds, 3),
                None,
                "design bound",
                seconds is not None and seconds <= bound,
                f"samples {gap[0] - fault.killed:+.2f}s and {gap[1] - fault.killed:+.2f}s from the kill; bound = "
                f"2 x batch {batch_timeout:g}s + kill to agents reloaded {kill_to_reloaded:.2f}s + 2 x export "
                f"interval {export_interval:g}s"
                if gap is not None
                else "no samples on both sides of the kill",
            )
        )
        same = history.series == 1 and history.labels_before is not None
        same = same and history.labels_before == history.labels_after
        rows.append(
            Check(
                f"{service}: one continuous series across the move",
                "1 series, same labels, no reset",
                f"{history.series} series, {'same' if same else 'other'} labels, "
                f"{'no reset' if history.monotonic else 'a reset'}",
                None,
                "exact",
                same and history.monotonic,
                f"{len(history.timestamps)} samples; labels {sorted((history.labels_after or {}).items())}",
            )
        )
    return rows, figures


def _kinds(counts: Mapping[str, float]) -> str:
    kinds = [
        f"{k.removeprefix('tsdb_')} {v:g}"
        for k, v in counts.items()
        if k.startswith("tsdb_") and k != "tsdb_refused_samples"
    ]
    return f" ({', '.join(kinds)})" if kinds else ""


def refusal_checks(windows: Mapping[str, Mapping[str, float]], fault_windows: Sequence[str]) -> list[Check]:
    """No receiver refused a sample (out of order, duplicate, too old) outside the faults' windows."""
    rows = []
    for name, counts in windows.items():
        refused = counts["tsdb_refused_samples"] + counts["ingestor_refusal_log_lines"] + counts["router_conflicts_409"]
        if name in fault_windows:
            continue
        rows.append(
            Check(
                f"receivers refused no samples: {name}",
                0,
                refused,
                None,
                "exact",
                refused == 0,
                f"TSDB refused {counts['tsdb_refused_samples']:g}{_kinds(counts)}, refusal log lines "
                f"{counts['ingestor_refusal_log_lines']:g}, router 409 {counts['router_conflicts_409']:g}, "
                f"router 5xx {counts['router_errors_5xx']:g} of {counts['router_writes_2xx']:g} writes answered 2xx",
            )
        )
    return rows


def ingestor_fault_checks(
    topology: Topology, before: Sequence[Sample], after: Sequence[Sample], live: Sequence[str]
) -> list[Check]:
    """The router kept answering writes while one of its three ingestors was dead, and did try the dead one."""

    def answers(samples: Sequence[Sample], ok: bool) -> float:
        return sum(
            s.value
            for s in samples
            if s.name == "http_requests_total"
            and s.labels.get("handler") == "receive"
            and s.labels.get("code", "").startswith("2") == ok
        )

    written = answers(after, True) - answers(before, True)
    refused = answers(after, False) - answers(before, False)
    forwarded_errors = counter(after, "thanos_receive_forward_requests", result="error") - counter(
        before, "thanos_receive_forward_requests", result="error"
    )
    quorum = write_quorum(topology.ring.replication_factor)
    return [
        Check(
            f"ingestor {KILLED_INGESTOR} killed: the router refused no write (quorum {quorum} of "
            f"{topology.ring.replication_factor})",
            0,
            refused,
            None,
            "exact",
            refused == 0 and written > 0,
            f"{written:g} remote writes answered 2xx after the kill; {forwarded_errors:g} forwards to the dead "
            f"ingestor failed; {len(live)} ingestors left",
        )
    ]


def detection_check(fault: GatewayFault) -> Check:
    reroute = fault.reroute
    detection = reroute.detected - fault.killed
    bound = detection_bound()
    return Check(
        f"{fault.victim.name} killed: the watcher dropped it and the agents reloaded",
        f"detection <= {bound:g}s, {fault.victim.address} removed",
        f"{detection:.2f}s, removed {', '.join(reroute.removed)}",
        None,
        "design bound",
        detection <= bound and reroute.removed == [fault.victim.address] and not reroute.errors,
        f"SIGHUP to reloaded {reroute.reload_seconds:.2f}s; live gateways now {', '.join(reroute.live)}",
    )


def restart_check(restart: AgentRestart, cp: Checkpoint, topology: Topology) -> Check:
    """Every service of the restarted node tried to export while its agent was down, and its totals in Query are
    exact again at the next checkpoint."""
    services = [s.name for s in topology.services if s.node == restart.node]
    exact = [s for s in services if cp.answered.get(s) == cp.requests.get(s)]
    tried = [s for s in services if restart.during_downtime.get(s)]
    retried = ", ".join(
        f"{s} {len(restart.during_downtime[s])} export(s) taking {max(t for t, _ in restart.during_downtime[s]):.2f}s"
        for s in tried
    )
    return Check(
        f"agent of {restart.node} restarted: its services' totals exact again",
        f"{len(services)} of {len(services)}",
        f"{len(exact)} of {len(services)}",
        None,
        "exact",
        len(exact) == len(services) and len(tried) == len(services),
        f"down {restart.healthy - restart.stopped:.2f}s (SIGTERM to healthy on the same ports); exports that met "
        f"the downtime, retried by the SDK: {retried or 'none'}; {restart.failed_exports} failed for good",
    )


def mid_load_check(mid_load: Mapping[str, bool]) -> Check:
    running = [name for name, on in mid_load.items() if on]
    return Check(
        "every fault came while the load ran",
        f"{len(mid_load)} of {len(mid_load)}",
        f"{len(running)} of {len(mid_load)}",
        None,
        "exact",
        len(running) == len(mid_load),
        "" if len(running) == len(mid_load) else "the load ended early: raise --requests",
    )


def dropped_for(log_text: str, endpoint: str) -> int:
    """Points an agent's load_balancing exporter dropped for ``endpoint`` (its log's "Dropping data" lines: what it
    still held for a gateway that died, dropped when the reload shut it down)."""
    pattern = re.compile(rf'"endpoint": "{re.escape(endpoint)}".*"dropped_items": (\d+)')
    return sum(
        int(m.group(1))
        for line in log_text.splitlines()
        if "Dropping data" in line
        for m in [pattern.search(line)]
        if m
    )


def gateway_send_failures(topology: Topology) -> Check:
    """The surviving gateways never failed to remote-write a point (the ingestor fault cost them nothing)."""
    failed = {
        g.name: counter(scrape(g.collector.telemetry_url), SEND_FAILED_POINTS, exporter="prometheus_remote_write")
        for g in topology.live_gateways
    }
    return Check(
        "surviving gateways' remote-write send failures",
        0,
        sum(failed.values()),
        None,
        "exact",
        sum(failed.values()) == 0,
        ", ".join(f"{name} {n:g}" for name, n in failed.items()),
    )
