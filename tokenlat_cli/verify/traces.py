"""verify for the traces pipeline: tail sampling keeps what the profile promises, whole, with user ids hashed.

A second real tokenlat-otelcol, the trace sink, stands in for the trace backend: its OTLP receiver takes what the
verified Collector's ``otlp_grpc/traces`` exporter sends and its ``file`` exporter writes it as OTLP JSON lines.
Synthetic traces of four kinds go in (VIP tier, error, slow TTFT, ordinary); every trace of the first three must
come out, ordinary ones at about the sampling percentage, each with all its spans and no raw user id.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.trace import SpanKind, Status, StatusCode

from tokenlat.configure import TLSFiles
from tokenlat_cli import stopping
from tokenlat_cli.collector import find_collector
from tokenlat_cli.verify.checks import Check
from tokenlat_cli.verify.processes import ManagedProcess, ProcessGroup, free_port, http_ok
from tokenlat_cli.verify.services import START_TIMEOUT

TTFT_ATTRIBUTE = "gen_ai.response.time_to_first_chunk"
ROOT_SPAN_NAME = "chat tokenlat-synthetic"
CHILD_SPAN_NAME = "tokenlat-synthetic stream"
KINDS = ("vip", "error", "slow", "ordinary")
# Share of each kept-for-sure kind; the rest is ordinary traffic that only the probabilistic policy may keep.
KIND_SHARE = 0.1
# The sink writes what it received this often; short, so that polling sees the data soon after it arrives.
SINK_FLUSH_SECONDS = 0.1
# The tail sampler evaluates the traces whose decision_wait is over once per second (its ticker, not configurable).
TAIL_SAMPLING_TICK_SECONDS = 1.0
POLL_SECONDS = 0.1
# The binomial bound of the sampled count: this many standard deviations, and never tighter than MIN_TOLERANCE
# traces (at 0% or 100% the deviation is 0, yet a trace lost on the way should not be hidden either; 2 is small).
SIGMAS = 4.0
MIN_TOLERANCE = 2.0

_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration_seconds(text: str) -> float:
    """A profile duration ("500ms", "5s", "1m", "1h"; the schema allows nothing else) in seconds."""
    for unit in ("ms", "s", "m", "h"):
        if text.endswith(unit) and text[: -len(unit)].isdigit():
            return int(text[: -len(unit)]) * _DURATION_UNITS[unit]
    raise ValueError(f"not a duration: {text!r}")


# --- the sink ---------------------------------------------------------------------------------------------------


@dataclass
class TraceSink:
    process: ManagedProcess
    otlp_endpoint: str
    path: Path


def sink_config(otlp_endpoint: str, health_endpoint: str, telemetry_port: int, path: Path) -> str:
    """The sink's config: OTLP gRPC in, OTLP JSON lines out, nothing in between that could change the data."""
    config = {
        "extensions": {"health_check": {"endpoint": health_endpoint}},
        "receivers": {"otlp": {"protocols": {"grpc": {"endpoint": otlp_endpoint}}}},
        "exporters": {
            "file": {"path": str(path), "format": "json", "flush_interval": f"{round(SINK_FLUSH_SECONDS * 1000)}ms"}
        },
        "service": {
            "extensions": ["health_check"],
            "telemetry": {
                "logs": {"level": "info"},
                # Its own metrics on a free port: the default (8888) may be the verified Collector's, or taken.
                "metrics": {
                    "readers": [{"pull": {"exporter": {"prometheus": {"host": "127.0.0.1", "port": telemetry_port}}}}]
                },
            },
            "pipelines": {"traces": {"receivers": ["otlp"], "exporters": ["file"]}},
        },
    }
    header = (
        "# The trace sink of `tokenlat verify`: what the verified Collector exports as traces, written to a file.\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False)


def start_trace_sink(group: ProcessGroup, workdir: Path) -> TraceSink:
    """A second tokenlat-otelcol that receives the verified Collector's traces and writes them to a file; ready
    when its health check answers."""
    otlp_endpoint, health_endpoint = (f"127.0.0.1:{free_port()}" for _ in range(2))
    path = workdir / "trace-sink.jsonl"
    config = workdir / "trace-sink.yaml"
    config.write_text(sink_config(otlp_endpoint, health_endpoint, free_port(), path), encoding="utf-8")
    argv = [str(find_collector()), f"--config={config}"]
    process = group.start("trace sink (tokenlat-otelcol)", argv, workdir / "trace-sink.log")
    process.wait_until(lambda: http_ok(f"http://{health_endpoint}"), START_TIMEOUT, "healthy")
    return TraceSink(process, otlp_endpoint, path)


# --- reading what the sink wrote ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReceivedSpan:
    trace_id: str  # lower-case hex, as OTLP JSON writes it
    span_id: str
    parent_span_id: str  # "" for a root span
    name: str
    status_code: int  # 0 unset, 1 ok, 2 error
    attributes: dict[str, Any] = field(default_factory=dict)


def attribute_value(value: Mapping[str, Any]) -> Any:
    """An OTLP JSON AnyValue as a Python value. intValue is a string in OTLP JSON (64-bit ints), hence int()."""
    if "stringValue" in value:
        return value["stringValue"]
    if "boolValue" in value:
        return bool(value["boolValue"])
    if "intValue" in value:
        return int(value["intValue"])
    if "doubleValue" in value:
        return float(value["doubleValue"])
    if "arrayValue" in value:
        return [attribute_value(v) for v in value["arrayValue"].get("values", [])]
    if "kvlistValue" in value:
        return attributes_dict(value["kvlistValue"].get("values", []))
    if "bytesValue" in value:
        return value["bytesValue"]  # base64, left as it is
    return None


def attributes_dict(attributes: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {a["key"]: attribute_value(a.get("value", {})) for a in attributes}


def parse_spans(text: str) -> list[ReceivedSpan]:
    """Every span in the sink's file: one OTLP JSON ExportTraceServiceRequest per line.

    A last line without its newline is skipped: the sink may be in the middle of writing it, and the next poll
    reads it whole.
    """
    lines = text.split("\n")[:-1]
    spans = []
    for line in filter(None, (raw.strip() for raw in lines)):
        for resource_spans in json.loads(line).get("resourceSpans", []):
            for scope_spans in resource_spans.get("scopeSpans", []):
                for span in scope_spans.get("spans", []):
                    spans.append(
                        ReceivedSpan(
                            trace_id=span.get("traceId", "").lower(),
                            span_id=span.get("spanId", "").lower(),
                            parent_span_id=span.get("parentSpanId", "").lower(),
                            name=span.get("name", ""),
                            status_code=int(span.get("status", {}).get("code", 0)),
                            attributes=attributes_dict(span.get("attributes", [])),
                        )
                    )
    return spans


def read_sink(path: Path) -> tuple[str, list[ReceivedSpan]]:
    """The sink file's text and its spans; nothing yet when the sink has not written the file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "", []
    return text, parse_spans(text)


# --- the synthetic traces ----------------------------------------------------------------------------------------


@dataclass
class SyntheticTrace:
    kind: str  # one of KINDS
    user_id: str  # the raw user id the root span carries
    with_child: bool
    trace_id: str = ""  # hex, known once the root span is started

    @property
    def span_count(self) -> int:
        return 2 if self.with_child else 1


def plan_traces(count: int, seed: int) -> list[SyntheticTrace]:
    """``count`` traces: KIND_SHARE of each kept-for-sure kind, the rest ordinary, shuffled; a child span in about
    half of every kind, so that "kept whole" is checked for each policy."""
    rng = random.Random(seed)
    special = round(count * KIND_SHARE)
    kinds = [kind for kind in KINDS[:3] for _ in range(special)]
    kinds += ["ordinary"] * (count - len(kinds))
    rng.shuffle(kinds)
    return [
        SyntheticTrace(kind=kind, user_id=f"user-{i}@example.com", with_child=rng.random() < 0.5)
        for i, kind in enumerate(kinds)
    ]


class SeededIdGenerator(IdGenerator):
    """Trace and span ids from a seeded generator: with the same seed, the same ids, so the probabilistic policy
    (a hash of the trace id) keeps the same ordinary traces and a run can be reproduced."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(f"tokenlat-trace-ids-{seed}")

    def generate_span_id(self) -> int:
        return self._rng.getrandbits(64) or 1

    def generate_trace_id(self) -> int:
        return self._rng.getrandbits(128) or 1


class _CountingExporter(SpanExporter):
    """Passes spans on and counts those the receiver refused: BatchSpanProcessor only logs a failed export."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


def _tiers(traces_profile: Mapping[str, Any]) -> tuple[list[str], str]:
    vip_values = list(traces_profile["vip_values"])
    # An ordinary tier the profile does not keep; "free" unless a profile made that a VIP tier.
    ordinary = next(t for t in ("free", "standard", "tokenlat-ordinary") if t not in vip_values)
    return vip_values, ordinary


def send_traces(
    plan: Sequence[SyntheticTrace],
    otlp_endpoint: str,
    tls: TLSFiles | None,
    profile: Mapping[str, Any],
    seed: int,
) -> int:
    """Send the planned traces through a private TracerProvider; return how many spans were not accepted."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    traces_profile = profile["traces"]
    vip_values, ordinary_tier = _tiers(traces_profile)
    user_key = profile["deidentification"]["user_id_attributes"][0]
    threshold = float(traces_profile["slow_ttft_seconds"])
    exporter = _CountingExporter(OTLPSpanExporter(endpoint=otlp_endpoint, **(tls.grpc_options() if tls else {})))  # type: ignore[arg-type]
    provider = TracerProvider(
        resource=Resource.create({"service.name": "tokenlat-verify-traces"}), id_generator=SeededIdGenerator(seed)
    )
    # A queue that holds every span: the default drops spans beyond 2048, which would look like sampling loss.
    spans = sum(t.span_count for t in plan)
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=max(2048, 2 * spans)))
    tracer = provider.get_tracer("tokenlat.verify.traces")
    rng = random.Random(seed)
    try:
        for i, trace in enumerate(plan):
            # Each kind differs from ordinary traffic in exactly one respect, so each policy is checked alone.
            tier = vip_values[i % len(vip_values)] if trace.kind == "vip" else ordinary_tier
            ttft = threshold + 0.5 + rng.random() if trace.kind == "slow" else threshold * rng.uniform(0.1, 0.9)
            attributes = {
                "gen_ai.operation.name": "chat",
                traces_profile["vip_attribute"]: tier,
                user_key: trace.user_id,
                TTFT_ATTRIBUTE: ttft,
            }
            with tracer.start_as_current_span(ROOT_SPAN_NAME, kind=SpanKind.SERVER, attributes=attributes) as root:
                trace.trace_id = format(root.get_span_context().trace_id, "032x")
                if trace.with_child:
                    with tracer.start_as_current_span(CHILD_SPAN_NAME, kind=SpanKind.INTERNAL):
                        pass
                if trace.kind == "error":
                    root.set_status(Status(StatusCode.ERROR, "synthetic error"))
                else:
                    root.set_status(Status(StatusCode.OK))
        provider.force_flush()
    finally:
        provider.shutdown()
    return exporter.failed


# --- what arrived -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrived:
    """What the sink holds of one run's traces: span ids per trace id."""

    spans: dict[str, set[str]]
    roots: dict[str, ReceivedSpan]

    @classmethod
    def of(cls, received: Iterable[ReceivedSpan], trace_ids: set[str]) -> Arrived:
        spans: dict[str, set[str]] = {}
        roots: dict[str, ReceivedSpan] = {}
        for span in received:
            # Only this run's traces: the sink may hold others (an earlier run against the same sink).
            if span.trace_id not in trace_ids:
                continue
            spans.setdefault(span.trace_id, set()).add(span.span_id)
            if not span.parent_span_id:
                roots[span.trace_id] = span
        return cls(spans, roots)

    def snapshot(self) -> tuple[int, int]:
        return len(self.spans), sum(len(s) for s in self.spans.values())


def binomial_tolerance(n: int, p: float, sigmas: float = SIGMAS, minimum: float = MIN_TOLERANCE) -> float:
    """How far the kept count of n traces sampled with probability p may be from n*p: ``sigmas`` standard
    deviations (at 4, a false alarm about once in 16,000 runs), at least ``minimum`` traces."""
    return max(minimum, sigmas * math.sqrt(n * p * (1.0 - p)))


def sampled_check(name: str, n: int, percentage: float, kept: int, detail: str = "") -> Check:
    p = percentage / 100.0
    expected = round(n * p, 2)
    tolerance = binomial_tolerance(n, p)
    error = round(kept - expected, 2)
    passed = abs(error) <= tolerance
    text = f"{kept} of {n} kept at {percentage:g}%; binomial bound {SIGMAS:g} sd (at least {MIN_TOLERANCE:g})"
    return Check(name, expected, kept, error, round(tolerance, 2), passed, "; ".join(filter(None, (text, detail))))


def user_id_hash(salt: str, user_id: str) -> str:
    """What the Collector's de-identification writes: OTTL SHA256(Concat([salt, uid], ":")). At the pinned
    Collector release (collector/VERSION) SHA256 returns hex.EncodeToString of the digest, i.e. lower-case hex,
    as hexdigest() does."""
    return hashlib.sha256(f"{salt}:{user_id}".encode()).hexdigest()


def evaluate(
    plan: Sequence[SyntheticTrace],
    arrived: Arrived,
    sink_text: str,
    profile: Mapping[str, Any],
    salt: str,
    note: str = "",
) -> list[Check]:
    """The checks, from the plan (what was sent) and what the sink holds."""
    checks = []
    by_kind: dict[str, list[SyntheticTrace]] = {kind: [t for t in plan if t.kind == kind] for kind in KINDS}
    for kind, name in (("vip", "VIP tier"), ("error", "errors"), ("slow", "slow TTFT")):
        sent = by_kind[kind]
        kept = sum(t.trace_id in arrived.spans for t in sent)
        passed = kept == len(sent)
        detail = f"{kept} of {len(sent)} kept" + ("" if passed else "; every one must be kept")
        checks.append(
            Check(f"traces kept: {name}", len(sent), kept, kept - len(sent), "exact", passed, _join(detail, note))
        )

    ordinary = by_kind["ordinary"]
    kept_ordinary = sum(t.trace_id in arrived.spans for t in ordinary)
    percentage = float(profile["traces"]["sample_percentage"])
    checks.append(sampled_check("traces kept: ordinary (sampled)", len(ordinary), percentage, kept_ordinary, note))

    kept = [t for t in plan if t.trace_id in arrived.spans]
    whole = [t for t in kept if len(arrived.spans[t.trace_id]) == t.span_count]
    with_child = sum(t.with_child for t in kept)
    checks.append(
        Check(
            "whole traces kept",
            len(kept),
            len(whole),
            len(whole) - len(kept),
            "exact",
            len(whole) == len(kept) and bool(kept),
            _join(f"{len(kept)} traces kept, {with_child} of them with a child span", note),
        )
    )
    checks.append(_deidentified_check(plan, kept, arrived, sink_text, profile, salt))
    return checks


def _deidentified_check(
    plan: Sequence[SyntheticTrace],
    kept: Sequence[SyntheticTrace],
    arrived: Arrived,
    sink_text: str,
    profile: Mapping[str, Any],
    salt: str,
) -> Check:
    key = profile["deidentification"]["user_id_attributes"][0]
    # Raw ids anywhere in the file (any attribute, resource or span), not only where they were put; every id sent,
    # not only those of kept traces. The "@" after the number keeps user-1@ from matching user-10@.
    leaked = {t.user_id for t in plan if t.user_id in sink_text}
    expected = {t.trace_id: user_id_hash(salt, t.user_id) for t in kept}
    wrong = []
    for t in kept:
        root = arrived.roots.get(t.trace_id)
        value = None if root is None else root.attributes.get(key)
        if value != expected[t.trace_id] or t.user_id in leaked:
            wrong.append((t, "no root span" if root is None else repr(value)))
    good = len(kept) - len(wrong)
    passed = not wrong and not leaked and bool(kept)
    detail = f"{key} of {len(kept)} kept root spans must be SHA-256(salt + ':' + id), lower-case hex"
    if leaked:
        detail += f"; {len(leaked)} raw user ids found in the sink's file"
    if wrong:
        t, shown = wrong[0]
        detail += f"; e.g. {t.user_id!r} arrived as {shown}, expected {expected[t.trace_id]!r}"
    return Check("user ids de-identified in traces", len(kept), good, good - len(kept), "exact", passed, detail)


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


# --- the whole thing ----------------------------------------------------------------------------------------------


def wait_for_sink(path: Path, trace_ids: set[str], settle: float, deadline: float) -> tuple[str, Arrived]:
    """Poll the sink's file until what arrived of these traces stops changing, at least ``settle`` seconds after
    the flush (the time a decision takes to reach the file), or until ``deadline`` seconds."""
    started = time.monotonic()
    last: tuple[int, int] | None = None
    changed = started
    while True:
        text, spans = read_sink(path)
        arrived = Arrived.of(spans, trace_ids)
        now = time.monotonic()
        snapshot = arrived.snapshot()
        if snapshot != last:
            last, changed = snapshot, now
        # Quiet for a whole settle period: a decision still pending would have reached the file by then.
        if now - started >= settle and snapshot[0] > 0 and now - changed >= settle:
            return text, arrived
        if now - started >= deadline:
            return text, arrived
        stopping.sleep(POLL_SECONDS)  # a stop request (SIGTERM, Ctrl-C) ends the wait here


def trace_checks(
    sink: TraceSink,
    otlp_endpoint: str,
    tls: TLSFiles | None,
    profile: dict[str, Any],
    salt: str,
    *,
    traces: int = 400,
    seed: int = 0,
    deadline: float = 30.0,
) -> list[Check]:
    """Send ``traces`` synthetic traces to the verified Collector at ``otlp_endpoint`` and check what its traces
    pipeline delivered to ``sink``."""
    plan = plan_traces(traces, seed)
    failed = send_traces(plan, otlp_endpoint, tls, profile, seed)
    spans = sum(t.span_count for t in plan)
    note = f"{failed} of {spans} spans were not accepted by the Collector" if failed else ""
    # A decision waits decision_wait, then up to a tick of the sampler, the Collector's batch timeout and the sink's
    # flush interval before it is in the file.
    settle = (
        duration_seconds(profile["traces"]["decision_wait"])
        + TAIL_SAMPLING_TICK_SECONDS
        + duration_seconds(profile["pipeline"]["batch"]["timeout"])
        + SINK_FLUSH_SECONDS
    )
    # Nothing accepted, nothing to wait for (a refused client certificate, a Collector that is down).
    text, arrived = wait_for_sink(sink.path, {t.trace_id for t in plan}, settle, deadline if failed < spans else 0.0)
    return evaluate(plan, arrived, text, profile, salt, note)
