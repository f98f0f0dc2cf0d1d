"""verify's traces checks: parsing the sink's OTLP JSON, the binomial bound, and the real two-Collector setup."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenlat_cli.verify.checks import Check
from tokenlat_cli.verify.traces import (
    Arrived,
    ReceivedSpan,
    SyntheticTrace,
    attribute_value,
    binomial_tolerance,
    duration_seconds,
    evaluate,
    parse_spans,
    plan_traces,
    sampled_check,
    sink_config,
    user_id_hash,
)

SALT = "pepper"
PROFILE: dict[str, Any] = {
    "traces": {
        "vip_attribute": "tokenlat.user.tier",
        "vip_values": ["vip"],
        "slow_ttft_seconds": 1.0,
        "sample_percentage": 10.0,
        "decision_wait": "1s",
    },
    "deidentification": {"user_id_attributes": ["user.id", "enduser.id"], "salt_env": "TOKENLAT_USER_ID_SALT"},
    "pipeline": {"batch": {"timeout": "1s"}},
}


def _span(trace_id: str, span_id: str, parent: str = "", attributes: list[dict[str, Any]] | None = None) -> dict:
    span: dict[str, Any] = {"traceId": trace_id, "spanId": span_id, "name": "s", "kind": 2, "status": {"code": 1}}
    if parent:
        span["parentSpanId"] = parent
    if attributes is not None:
        span["attributes"] = attributes
    return span


def _line(*spans: dict[str, Any]) -> str:
    return json.dumps({"resourceSpans": [{"resource": {}, "scopeSpans": [{"scope": {}, "spans": list(spans)}]}]})


# --- parsing ------------------------------------------------------------------------------------------------------


def test_parse_spans_reads_every_line_and_attribute_type() -> None:
    attributes = [
        {"key": "s", "value": {"stringValue": "x"}},
        {"key": "i", "value": {"intValue": "42"}},  # OTLP JSON writes 64-bit ints as strings
        {"key": "d", "value": {"doubleValue": 1.5}},
        {"key": "b", "value": {"boolValue": True}},
        {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "p"}, {"intValue": "1"}]}}},
        {"key": "k", "value": {"kvlistValue": {"values": [{"key": "n", "value": {"doubleValue": 2.0}}]}}},
    ]
    text = _line(_span("AB" * 16, "01" * 8, attributes=attributes)) + "\n"
    text += _line(_span("ab" * 16, "02" * 8, parent="01" * 8), _span("cd" * 16, "03" * 8)) + "\n"
    spans = parse_spans(text)
    assert [(s.trace_id, s.span_id, s.parent_span_id) for s in spans] == [
        ("ab" * 16, "01" * 8, ""),
        ("ab" * 16, "02" * 8, "01" * 8),
        ("cd" * 16, "03" * 8, ""),
    ]
    assert spans[0].attributes == {"s": "x", "i": 42, "d": 1.5, "b": True, "a": ["p", 1], "k": {"n": 2.0}}
    assert spans[0].status_code == 1
    assert attribute_value({}) is None


def test_parse_spans_skips_a_line_still_being_written() -> None:
    whole = _line(_span("ab" * 16, "01" * 8)) + "\n"
    partial = _line(_span("cd" * 16, "02" * 8))[:40]
    assert [s.trace_id for s in parse_spans(whole + partial)] == ["ab" * 16]
    assert parse_spans("") == []


def test_arrived_keeps_only_this_runs_traces() -> None:
    spans = parse_spans(
        _line(_span("aa" * 16, "01" * 8), _span("aa" * 16, "02" * 8, parent="01" * 8), _span("bb" * 16, "03" * 8))
        + "\n"
    )
    arrived = Arrived.of(spans, {"aa" * 16})
    assert arrived.spans == {"aa" * 16: {"01" * 8, "02" * 8}}
    assert arrived.roots["aa" * 16].span_id == "01" * 8
    assert arrived.snapshot() == (1, 2)


def test_duration_seconds() -> None:
    assert [duration_seconds(d) for d in ("500ms", "1s", "2m", "1h")] == [0.5, 1.0, 120.0, 3600.0]
    with pytest.raises(ValueError):
        duration_seconds("1.5s")


# --- the binomial bound ------------------------------------------------------------------------------------------


def test_binomial_tolerance() -> None:
    # 280 ordinary traces at 10%: sd = sqrt(280 * 0.1 * 0.9) = 5.02, four of them 20.08.
    assert binomial_tolerance(280, 0.1) == pytest.approx(20.08, abs=0.01)
    # No spread at 0% and 100%; the floor still allows for two traces.
    assert binomial_tolerance(280, 0.0) == 2.0
    assert binomial_tolerance(280, 1.0) == 2.0
    assert binomial_tolerance(10, 0.5, sigmas=1.0, minimum=0.0) == pytest.approx(10**0.5 / 2)


def test_sampled_check_within_and_outside_the_bound() -> None:
    inside = sampled_check("s", 280, 10.0, 40)  # 28 expected, 12 off, bound 20.08
    assert inside.passed and inside.expected == 28.0 and inside.error == 12.0
    assert not sampled_check("s", 280, 10.0, 49).passed  # 21 off
    assert not sampled_check("s", 280, 10.0, 7).passed
    assert sampled_check("s", 280, 100.0, 279).passed  # one lost: within the floor of 2
    assert not sampled_check("s", 280, 100.0, 277).passed


# --- the checks on hand-made data --------------------------------------------------------------------------------


def test_user_id_hash_is_lower_case_hex_sha256_of_salt_colon_id() -> None:
    # printf '%s' 'pepper:user-7@example.com' | sha256sum
    assert user_id_hash(SALT, "user-7@example.com") == (
        "595934e1e2b4ca0883e8e45713c7092255ec212fc0afcf240543df394aa0137e"
    )


def test_plan_traces_is_seeded_with_ten_percent_of_each_kind() -> None:
    plan = plan_traces(400, seed=3)
    assert [sum(t.kind == k for t in plan) for k in ("vip", "error", "slow", "ordinary")] == [40, 40, 40, 280]
    assert any(t.with_child for t in plan) and not all(t.with_child for t in plan)
    assert [(t.kind, t.with_child) for t in plan] == [(t.kind, t.with_child) for t in plan_traces(400, seed=3)]
    assert len({t.user_id for t in plan}) == 400


@dataclass
class _Fake:
    plan: list[SyntheticTrace]
    spans: list[ReceivedSpan]

    def text(self) -> str:
        return "\n".join(json.dumps(s.attributes) for s in self.spans)

    def checks(self) -> dict[str, Check]:
        arrived = Arrived.of(self.spans, {t.trace_id for t in self.plan})
        return {c.name: c for c in evaluate(self.plan, arrived, self.text(), PROFILE, SALT)}


def _fake(ordinary: int = 20, kept_ordinary: int = 2) -> _Fake:
    """A run of 2 traces of each sure kind (one with a child) and ``ordinary`` ordinary ones, and a sink that holds
    everything it should, correctly hashed."""
    plan = [
        SyntheticTrace(kind, f"user-{i}@example.com", with_child=i % 2 == 0, trace_id=f"{i:032x}")
        for i, kind in enumerate(["vip", "vip", "error", "error", "slow", "slow"] + ["ordinary"] * ordinary)
    ]
    spans = []
    for i, t in enumerate(plan):
        if t.kind == "ordinary" and i >= 6 + kept_ordinary:
            continue
        root = f"{2 * i + 1:016x}"
        spans.append(ReceivedSpan(t.trace_id, root, "", "root", 1, {"user.id": user_id_hash(SALT, t.user_id)}))
        if t.with_child:
            spans.append(ReceivedSpan(t.trace_id, f"{2 * i + 2:016x}", root, "child", 0, {}))
    return _Fake(plan, spans)


def test_checks_pass_when_everything_arrived() -> None:
    checks = _fake().checks()
    assert all(c.passed for c in checks.values()), checks
    assert checks["whole traces kept"].expected == 8
    assert checks["traces kept: ordinary (sampled)"].observed == 2


def test_a_lost_vip_trace_fails_the_vip_check_only() -> None:
    fake = _fake()
    fake.spans = [s for s in fake.spans if s.trace_id != fake.plan[0].trace_id]
    checks = fake.checks()
    assert not checks["traces kept: VIP tier"].passed
    assert checks["traces kept: VIP tier"].observed == 1
    assert all(c.passed for name, c in checks.items() if name != "traces kept: VIP tier")


def test_a_lost_child_span_fails_whole_traces() -> None:
    fake = _fake()
    fake.spans = [s for s in fake.spans if not (s.trace_id == fake.plan[2].trace_id and s.parent_span_id)]
    check = fake.checks()["whole traces kept"]
    assert not check.passed and check.observed == check.expected - 1  # type: ignore[operator]


def test_too_many_ordinary_traces_fail_the_sampled_check() -> None:
    assert not _fake(ordinary=20, kept_ordinary=20).checks()["traces kept: ordinary (sampled)"].passed


def test_a_raw_or_wrongly_hashed_user_id_fails_de_identification() -> None:
    fake = _fake()
    first = fake.spans[0]
    fake.spans[0] = ReceivedSpan(first.trace_id, first.span_id, "", "root", 1, {"user.id": "user-0@example.com"})
    check = fake.checks()["user ids de-identified in traces"]
    assert not check.passed and "raw user ids" in check.detail

    fake = _fake()
    # Upper-case hex, or another salt, is not what the Collector writes.
    fake.spans[0] = ReceivedSpan(first.trace_id, first.span_id, "", "root", 1, {"user.id": "AB" * 32})
    check = fake.checks()["user ids de-identified in traces"]
    assert not check.passed and check.observed == check.expected - 1  # type: ignore[operator]


def test_nothing_arrived_fails_every_check_but_sampling_at_zero() -> None:
    fake = _fake()
    fake.spans = []
    checks = fake.checks()
    assert [name for name, c in checks.items() if c.passed] == [
        "traces kept: ordinary (sampled)"
    ]  # 0 of 20: within the bound


def test_sink_config_is_yaml_with_a_file_exporter(tmp_path: Path) -> None:
    config = yaml.safe_load(sink_config("127.0.0.1:1", "127.0.0.1:2", 3, tmp_path / "out.jsonl"))
    assert config["exporters"]["file"] == {
        "path": str(tmp_path / "out.jsonl"),
        "format": "json",
        "flush_interval": "100ms",
    }
    assert config["service"]["pipelines"] == {"traces": {"receivers": ["otlp"], "exporters": ["file"]}}
