"""`tokenlat verify --topology scale-out` end to end: four services on two nodes, an agent a node, three gateways,
a Thanos Receive hashring (three ingestors behind a router, replication factor 3) read through Query, and three
faults while the load runs (an ingestor and a gateway killed, an agent restarted). docs/scale-out.md.

The run is the command itself, as a user runs it, with fewer exports held between its steps than by default to keep
it short (about 40 s on 2 cores); the report's JSON is what is asserted on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.subprocesses import verify_subprocess
from tokenlat import semconv
from tokenlat_cli.verify.gateway_discovery import detection_bound

DURATION = semconv.prometheus_name(semconv.DURATION_SPEC)


def _processes_mentioning(text: str) -> list[str]:
    """Command lines of the processes still running that mention ``text`` (the run's temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(cmdline)
    return found


def test_scale_out_topology_survives_its_faults_with_exact_counts(
    collector_binary: Path, thanos_binary: Path, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    workdirs = tmp_path / "tmp"
    workdirs.mkdir()
    result = verify_subprocess(
        ["--profile", "thanos", "--topology", "scale-out", "--hold-exports", "2", "--json", str(report_path)],
        env={"TMPDIR": str(workdirs)},
        timeout=240,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-4000:]
    assert "verify PASSED" in result.stdout
    for stage in (
        "[1/15] starting the Thanos Receive hashring",
        "fault 1: killing ingestor 2 (SIGKILL) mid-load",
        "fault 2: killing gateway",
        "fault 3: restarting the agent of node-a",
        "[15/15] stopping services",
    ):
        assert stage in result.stderr, stage
    report = json.loads(report_path.read_text(encoding="utf-8"))
    checks: dict[str, dict[str, Any]] = {c["name"]: c for c in report["checks"]}
    assert report["passed"] and all(c["passed"] for c in checks.values())
    assert report["settings"]["topology"] == "scale-out"

    # The whole load, exact through Query with one ingestor and one gateway gone.
    figures = report["measurements"]
    issued = figures["requests_issued"]
    assert issued > 100 and figures["requests_succeeded"] == issued
    requests = checks[f"{DURATION} count (requests)"]
    assert requests["expected"] == requests["observed"] == issued
    assert checks["requests stored under tenant_id=llm-inference"]["observed"] == issued
    assert checks["every fault came while the load ran"]["observed"] == "4 of 4"

    faults = figures["faults"]
    # 1. The ingestor fault: nothing refused, each of the two survivors holds every request.
    ingestor = faults["ingestor_killed"]["requests_after"]
    assert ingestor["exported"] == ingestor["in_query"]
    assert set(ingestor["per_replica"]) == {"0", "1"}
    assert set(ingestor["per_replica"].values()) == {sum(ingestor["exported"].values())}

    # 2. The gateway fault: its services moved to exactly one other gateway each, the others stayed; the gap in a
    # moved series is within the stated bound, and the series is one series throughout.
    gateway = faults["gateway_killed"]
    assert gateway["moved"], "the killed gateway had services routed to it"
    for service in gateway["moved"]:
        assert gateway["routes_after"][service] not in (None, gateway["gateway"])
        gap = gateway["gaps"][service]
        assert 0 < gap["gap_seconds"] <= gap["bound_seconds"], gap
        assert checks[f"{service}: one continuous series across the move"]["passed"]
    for service in gateway["stayed"]:
        assert gateway["routes_after"][service] == gateway["routes_before"][service]
    assert all(route is not None for route in gateway["routes_before"].values())
    assert 0 < gateway["detection_seconds"] <= detection_bound()
    assert gateway["requests_after"]["exported"] == gateway["requests_after"]["in_query"]

    # 3. The agent restart: its services' exports met the downtime, were retried, and the totals are exact.
    agent = faults["agent_restarted"]
    assert agent["exports_during_downtime"] and all(agent["exports_during_downtime"].values())
    assert agent["requests_after"]["exported"] == agent["requests_after"]["in_query"]

    # No receiver refused a sample outside the fault windows.
    for window, counts in figures["refusals"].items():
        if window not in ("gateway fault", "agent fault"):
            assert counts["tsdb_refused_samples"] == counts["router_conflicts_409"] == 0, window

    # Quantiles as the single-Collector verify judges them, over the four services' data merged.
    for spec in (semconv.TTFT_SPEC, semconv.TPOT_SPEC, semconv.DURATION_SPEC, semconv.ITL_SPEC):
        for q in ("p50", "p90", "p95", "p99"):
            assert checks[f"{semconv.prometheus_name(spec)} {q} vs the truth"]["tolerance"] == 0.02
            assert checks[f"{semconv.prometheus_name(spec)} {q} as the buckets allow"]["passed"]

    # Every process the run started is gone, and so is its temp dir.
    assert not list(workdirs.glob("tokenlat-verify-*")), "the temp dir must be removed without --keep"
    assert _processes_mentioning(str(workdirs)) == []
