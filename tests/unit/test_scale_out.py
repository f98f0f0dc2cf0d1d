"""The scale-out topology's parts that need no running program: the hashring file, the export gate, the gateway
watcher (with the health checks and the agents faked), and the judging (routes, gaps, refusals)."""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExportResult,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from tokenlat import semconv
from tokenlat.testing import CapturingExporter
from tokenlat_cli.main import cli
from tokenlat_cli.profiles import load_profile
from tokenlat_cli.verify import gateway_discovery, own_metrics
from tokenlat_cli.verify.export_gate import ExportGate, data_points
from tokenlat_cli.verify.gateway_discovery import READY_LINE, Agent, GatewayWatcher, detection_bound
from tokenlat_cli.verify.report import Report
from tokenlat_cli.verify.scale_out import go_duration_seconds
from tokenlat_cli.verify.scale_out_checks import (
    SeriesHistory,
    dropped_for,
    gap_bound,
    refusal_checks,
    routing_checks,
    sample_gap,
)
from tokenlat_cli.verify.scale_out_faults import Checkpoint, GatewayFault, counter
from tokenlat_cli.verify.scale_out_topology import UnsupportedTopology, check_scale_out_supported
from tokenlat_cli.verify.statistics import Recorded, merge_recorded
from tokenlat_cli.verify.thanos import ThanosReceive
from tokenlat_cli.verify.thanos_hashring import hashring_config, write_quorum

# --- the hashring ---


def _receive(grpc: str, capnp: str) -> ThanosReceive:
    return ThanosReceive(
        process=None,  # type: ignore[arg-type]
        remote_write_url="",
        grpc_address=grpc,
        http_url="",
        tenant_header="THANOS-TENANT",
        capnproto_address=capnp,
    )


def test_hashring_file_names_every_ingestor_with_its_capnproto_address() -> None:
    ring = hashring_config([_receive("127.0.0.1:1001", "127.0.0.1:2001"), _receive("127.0.0.1:1002", "127.0.0.1:2002")])
    # One ring, no tenant list (every tenant); each endpoint's Cap'n Proto address pinned, not the default :19391.
    assert ring == [
        {
            "hashring": "default",
            "algorithm": "ketama",
            "endpoints": [
                {"address": "127.0.0.1:1001", "capnproto_address": "127.0.0.1:2001"},
                {"address": "127.0.0.1:1002", "capnproto_address": "127.0.0.1:2002"},
            ],
        }
    ]


@pytest.mark.parametrize(("factor", "quorum"), [(1, 1), (2, 2), (3, 2), (5, 3)])
def test_write_quorum_is_thanos_majority(factor: int, quorum: int) -> None:
    assert write_quorum(factor) == quorum


# --- the processes' own metrics ---


def test_prometheus_text_is_read_with_labels_and_totals() -> None:
    text = "\n".join(
        [
            "# HELP otelcol_receiver_accepted_metric_points_total Number of points.",
            "# TYPE otelcol_receiver_accepted_metric_points_total counter",
            'otelcol_receiver_accepted_metric_points_total{receiver="otlp",transport="grpc"} 42',
            'otelcol_receiver_accepted_metric_points_total{receiver="other",transport="http"} 8',
            'http_requests_total{code="200",handler="receive",note="a \\"quoted\\", comma"} 3 1700000000000',
            "up 1",
            "broken{",
        ]
    )
    samples = own_metrics.parse(text)
    assert own_metrics.total(samples, "otelcol_receiver_accepted_metric_points_total") == 50
    assert own_metrics.total(samples, "otelcol_receiver_accepted_metric_points_total", receiver="otlp") == 42
    # The Collector's Prometheus reader may or may not add _total: either is found.
    assert counter(samples, "otelcol_receiver_accepted_metric_points") == 50
    request = next(s for s in samples if s.name == "http_requests_total")
    assert request.labels == {"code": "200", "handler": "receive", "note": 'a "quoted", comma'}
    assert own_metrics.total(samples, "nothing") == 0


def test_points_an_agent_dropped_for_the_dead_gateway_are_read_from_its_log() -> None:
    log = "\n".join(
        [
            '... error internal/queue_sender.go:62 Exporting failed. Dropping data. {"endpoint": "127.0.0.1:7", '
            '"error": "interrupted due to shutdown", "dropped_items": 9}',
            '... error Exporting failed. Dropping data. {"endpoint": "127.0.0.1:8", "dropped_items": 5}',
            '... info Exporting failed. Will retry the request after interval. {"endpoint": "127.0.0.1:7"}',
        ]
    )
    assert dropped_for(log, "127.0.0.1:7") == 9
    assert dropped_for(log, "127.0.0.1:9") == 0


# --- the export gate ---


def _metrics(points: int, requests: int) -> MetricsData:
    point = HistogramDataPoint({}, 0, 0, requests, 1.0, [requests], [], 0.1, 0.1)
    duration = Metric(
        name=semconv.DURATION_SPEC.name,
        description="",
        unit="s",
        data=Histogram([point], AggregationTemporality.CUMULATIVE),
    )
    others = [
        Metric(name=f"m{i}", description="", unit="1", data=Gauge(data_points=[NumberDataPoint({}, 0, 0, i)]))
        for i in range(points - 1)
    ]
    scope = ScopeMetrics(InstrumentationScope("t"), [duration, *others], "")
    return MetricsData([ResourceMetrics(Resource.create({}), [scope], "")])


def _export_in_thread(gate: ExportGate, data: MetricsData) -> threading.Thread:
    thread = threading.Thread(target=gate.export, args=(data,), daemon=True)
    thread.start()
    return thread


def test_gate_logs_exports_and_holds_them_while_shut() -> None:
    inner = CapturingExporter()
    gate = ExportGate(inner, "svc")
    assert gate.export(_metrics(3, 7)) is MetricExportResult.SUCCESS
    assert [(r.points, r.requests, r.ok) for r in gate.records] == [(3, 7, True)]
    assert data_points(_metrics(5, 1)) == 5

    gate.shut(timeout=1)
    held = _export_in_thread(gate, _metrics(2, 9))
    held.join(0.2)
    assert held.is_alive() and len(inner.exports) == 1  # waiting at the gate, not sent
    record = gate.let_one_through(timeout=2)
    held.join(2)
    assert not held.is_alive() and (record.points, record.requests) == (2, 9)
    # Exactly one: the next waits again.
    second = _export_in_thread(gate, _metrics(2, 10))
    second.join(0.2)
    assert second.is_alive() and len(inner.exports) == 2
    gate.open()
    second.join(2)
    assert not second.is_alive() and [r.requests for r in gate.records] == [7, 9, 10]
    assert gate.last_started >= gate.records[-1].started


def test_gate_released_for_shutdown_lets_everything_through() -> None:
    gate = ExportGate(CapturingExporter(), "svc")
    gate.shut(timeout=1)
    held = _export_in_thread(gate, _metrics(1, 1))
    gate.shutdown()  # the service's last export must never wait at a shut gate
    held.join(2)
    assert not held.is_alive()
    gate.shut(timeout=1)
    assert gate.export(_metrics(1, 2)) is MetricExportResult.SUCCESS


def test_let_one_through_names_the_service_when_no_export_comes() -> None:
    gate = ExportGate(CapturingExporter(), "svc-x")
    gate.shut(timeout=1)
    with pytest.raises(TimeoutError, match="svc-x"):
        gate.let_one_through(timeout=0.1)


# --- the gateway watcher ---


class _FakeProcess:
    """An agent process: SIGHUP 'reloads' it (a ready line in its log); it never exits."""

    def __init__(self, log: Path) -> None:
        self.log_path = log
        self.signals: list[int] = []
        log.write_text(f"{READY_LINE}\n", encoding="utf-8")
        self.popen = SimpleNamespace(poll=lambda: None)

    def signal_group(self, signum: int) -> None:
        self.signals.append(signum)
        with self.log_path.open("a", encoding="utf-8") as log:
            log.write(f"Config updated\n{READY_LINE}\n")


@pytest.fixture
def healthy(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, bool]]:
    health = {"http://g1/": True, "http://g2/": True, "http://g3/": True}
    monkeypatch.setattr(gateway_discovery, "probe", lambda url, timeout=0.5: health[url])
    yield health


def test_watcher_drops_a_dead_gateway_rewrites_each_agent_and_sends_sighup(
    healthy: dict[str, bool], tmp_path: Path
) -> None:
    agents = []
    for name in ("node-a", "node-b"):
        process = _FakeProcess(tmp_path / f"{name}.log")
        agents.append(
            Agent(name, process, tmp_path / f"{name}.yaml", lambda live, name=name: f"{name}: {','.join(live)}\n")  # type: ignore[arg-type]
        )
    gateways = {"g1:4317": "http://g1/", "g2:4317": "http://g2/", "g3:4317": "http://g3/"}
    with GatewayWatcher(gateways, agents, interval=0.02) as watcher:
        time.sleep(0.1)
        assert watcher.reroutes == [] and watcher.live == list(gateways)  # all healthy: nothing rewritten
        killed = time.time()
        healthy["http://g2/"] = False
        reroute = watcher.wait_for_reroute(1, timeout=5)
    assert reroute.removed == ["g2:4317"] and reroute.live == ["g1:4317", "g3:4317"] and not reroute.errors
    for agent in agents:
        assert agent.config_path.read_text(encoding="utf-8") == f"{agent.name}: g1:4317,g3:4317\n"
        assert agent.process.signals == [1]  # type: ignore[attr-defined]  # SIGHUP
    assert set(reroute.reloaded) == {"node-a", "node-b"}
    # Two failed probes at 20 ms: well within what the docs state for the default interval.
    assert reroute.detected - killed < detection_bound(0.02) + 0.5
    assert reroute.signalled >= reroute.detected and reroute.reload_seconds >= 0


def test_watcher_keeps_the_ring_when_no_gateway_answers(healthy: dict[str, bool], tmp_path: Path) -> None:
    process = _FakeProcess(tmp_path / "a.log")
    agent = Agent("node-a", process, tmp_path / "a.yaml", lambda live: ",".join(live))  # type: ignore[arg-type]
    with GatewayWatcher({"g1:4317": "http://g1/"}, [agent], interval=0.02) as watcher:
        healthy["http://g1/"] = False
        with pytest.raises(TimeoutError, match="no change of the live gateways"):
            watcher.wait_for_reroute(1, timeout=0.3)
    assert process.signals == [] and not agent.config_path.exists()


# --- judging ---


def test_go_durations() -> None:
    assert go_duration_seconds("1s") == 1.0
    assert go_duration_seconds("200ms") == 0.2
    assert go_duration_seconds("1m30s") == 90.0
    with pytest.raises(ValueError, match="not a duration"):
        go_duration_seconds("1 s")


def test_sample_gap_is_the_pair_around_the_moment() -> None:
    stamps = [10.0, 11.0, 12.0, 15.5, 16.5]
    assert sample_gap(stamps, 13.0) == (12.0, 15.5)
    assert sample_gap(stamps, 12.0) == (12.0, 15.5)
    assert sample_gap(stamps, 9.0) is None and sample_gap(stamps, 17.0) is None
    # 2 batch timeouts + kill to reloaded + 2 export intervals
    assert gap_bound(1.0, 0.6, 1.0) == pytest.approx(4.6)


def test_a_counter_reset_breaks_continuity() -> None:
    assert SeriesHistory(1, [1, 2, 3], [5, 5, 9], {}, {}).monotonic
    assert not SeriesHistory(1, [1, 2, 3], [5, 9, 2], {}, {}).monotonic


def _checkpoint(routes: dict[str, dict[str, float]], points: int = 6) -> Checkpoint:
    cp = Checkpoint("cp", 0.0, routes=routes)
    cp.points = dict.fromkeys(routes, points)
    return cp


def test_a_service_is_at_one_gateway_only_with_all_its_points_there() -> None:
    cp = _checkpoint({"a": {"g1": 6, "g2": 0}, "b": {"g1": 3, "g2": 3}, "c": {"g1": 0, "g2": 4}, "d": {"g1": 0}})
    assert cp.gateway_of("a") == "g1"
    assert cp.gateway_of("b") is None  # split over two gateways (what streamID routing would do)
    assert cp.gateway_of("c") is None  # some of its points missing
    assert cp.gateway_of("d") is None  # arrived nowhere


def test_routing_checks_see_a_moved_service_a_stayed_one_and_a_split() -> None:
    names = {"g1": "gateway 1", "g2": "gateway 2", "g3": "gateway 3"}
    before = _checkpoint({"a": {"g1": 6, "g2": 0, "g3": 0}, "b": {"g1": 0, "g2": 6, "g3": 0}})
    victim = SimpleNamespace(address="g1", name="gateway 1")
    fault = GatewayFault(victim, 0.0, None, ["a"], ["b"])  # type: ignore[arg-type]
    good = _checkpoint({"a": {"g2": 0, "g3": 6}, "b": {"g2": 6, "g3": 0}})
    assert [c.passed for c in routing_checks(before, good, fault, names)] == [True, True, True]
    split = _checkpoint({"a": {"g2": 3, "g3": 3}, "b": {"g2": 0, "g3": 6}})
    rows = routing_checks(before, split, fault, names)
    assert [c.passed for c in rows] == [True, False, False]
    assert "a->none" in rows[1].detail and "b->gateway 3" in rows[2].detail


def test_refusals_outside_the_fault_windows_fail_and_inside_are_not_judged() -> None:
    quiet = {
        "tsdb_refused_samples": 0,
        "ingestor_refusal_log_lines": 0,
        "router_conflicts_409": 0,
        "router_errors_5xx": 0,
        "router_writes_2xx": 9,
    }
    noisy = {**quiet, "tsdb_refused_samples": 2, "tsdb_out_of_order_histogram": 2}
    rows = refusal_checks({"before": quiet, "gateway fault": noisy, "after": noisy}, ("gateway fault",))
    assert [(c.name, c.passed) for c in rows] == [
        ("receivers refused no samples: before", True),
        ("receivers refused no samples: after", False),
    ]
    assert "out_of_order_histogram 2" in rows[1].detail


def test_what_several_services_recorded_merges_bucket_by_bucket() -> None:
    a = {"ttft": Recorded({1: 2, 3: 1}, None, 6)}
    b = {"ttft": Recorded({3: 4, 5: 1}, None, 6)}
    assert merge_recorded([a, b])["ttft"].counts == {1: 2, 3: 5, 5: 1}
    assert a["ttft"].counts == {1: 2, 3: 1}  # the parts are left as they were
    with pytest.raises(ValueError, match="ttft: the services recorded different buckets"):
        merge_recorded([a, {"ttft": Recorded({1: 1}, None, 5)}])


# --- the command ---


def test_scale_out_needs_a_thanos_profile() -> None:
    check_scale_out_supported(load_profile("thanos"))
    with pytest.raises(UnsupportedTopology, match="--topology scale-out needs a thanos profile"):
        check_scale_out_supported(load_profile("local"))


def test_verify_refuses_scale_out_with_another_profile_or_the_sidecar() -> None:
    result = CliRunner().invoke(cli, ["verify", "--profile", "local", "--topology", "scale-out"])
    assert result.exit_code == 2, result.output
    assert "needs a thanos profile" in result.output and "got backend.kind prometheus" in result.output
    result = CliRunner().invoke(cli, ["verify", "--profile", "thanos", "--topology", "scale-out", "--via-sidecar"])
    assert result.exit_code == 2 and "--via-sidecar" in result.output


def test_gate_discards_the_held_export_so_the_last_goes_alone() -> None:
    inner = CapturingExporter()
    gate = ExportGate(inner, "svc")
    gate.shut(timeout=1)
    held = _export_in_thread(gate, _metrics(1, 1))
    gate.discard_held(timeout=2)
    held.join(2)
    assert not held.is_alive() and inner.exports == [] and gate.records == []  # ended unsent
    gate.release()
    assert gate.export(_metrics(1, 2)) is MetricExportResult.SUCCESS  # the last export is not discarded
    assert [r.requests for r in gate.records] == [2]
    with pytest.raises(TimeoutError, match="no export held"):
        ExportGate(CapturingExporter(), "idle").discard_held(timeout=0.1)


def test_report_json_carries_the_measurements_with_non_finite_numbers_as_strings() -> None:
    report = Report(profile="thanos", settings={})
    assert "measurements" not in json.loads(report.to_json())  # the single-Collector report is as it was
    report.measurements.update({"faults": {"gateway_killed": {"reload_seconds": math.nan, "gaps": [1.5, math.inf]}}})
    figures = json.loads(report.to_json())["measurements"]["faults"]["gateway_killed"]
    assert figures == {"reload_seconds": "nan", "gaps": [1.5, "inf"]}
