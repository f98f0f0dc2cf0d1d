"""The rules renderer (tokenlat_cli/operate/rules.py) in Python: the PromQL follows the profile's histograms and SLO,
every alert is documented where its runbook_url points, and the thresholds are exact where the layout allows. What
the rules do in Prometheus is tested with promtool in tests/e2e/test_rules.py."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO
from tokenlat import semconv
from tokenlat_cli.operate import rules
from tokenlat_cli.profiles import Profile, builtin_names, load_profile

DOC = (REPO / "docs" / "rules.md").read_text(encoding="utf-8")


def groups(profile: Profile) -> list[dict[str, Any]]:
    return list(yaml.safe_load(rules.render(profile))["groups"])


def by_name(profile: Profile) -> dict[str, dict[str, Any]]:
    return {rule.get("alert") or rule["record"]: rule for group in groups(profile) for rule in group["rules"]}


def with_slo(tmp_path: Path, base: str, **slo: Any) -> Profile:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"extends": base, "slo": slo}), encoding="utf-8")
    return load_profile(str(path))


@pytest.mark.parametrize(("bound", "text"), [(2.0, "2"), (0.09741, "0.09741"), (1e-05, "0.00001"), (120.0, "120")])
def test_le_values_are_written_as_the_collector_writes_them(bound: float, text: str) -> None:
    assert rules.le_value(bound) == text


def test_every_alert_has_severity_and_annotations_documented_at_its_anchor() -> None:
    for name in builtin_names():
        for group in groups(load_profile(name)):
            for rule in group["rules"]:
                if "record" in rule:
                    assert f"`{rule['record']}" in DOC or rule["record"].rsplit(":", 1)[0] in DOC, rule["record"]
                    continue
                assert rule["labels"]["severity"] in ("page", "ticket")
                assert set(rule["annotations"]) == {"summary", "description", "runbook_url"}
                anchor = rule["annotations"]["runbook_url"].split("#", 1)[1]
                assert f"### {rule['alert']}\n" in DOC and anchor == rule["alert"].lower(), rule["alert"]


def test_native_and_classic_profiles_query_their_own_series() -> None:
    native, classic = by_name(load_profile("local")), by_name(load_profile("selfhosted"))
    ttft = semconv.prometheus_name(semconv.TTFT_SPEC)
    assert f"rate({ttft}[5m])" in native["tokenlat:ttft_seconds:p95_5m"]["expr"]
    assert "_bucket" not in native["tokenlat:ttft_seconds:p95_5m"]["expr"]
    assert f"rate({ttft}_bucket[5m])" in classic["tokenlat:ttft_seconds:p95_5m"]["expr"]
    assert "histogram_fraction(0, 2," in native["tokenlat:ttft_over_slo:ratio_rate1h"]["expr"]
    assert f'{ttft}_bucket{{le="2"}}[1h]' in classic["tokenlat:ttft_over_slo:ratio_rate1h"]["expr"]
    assert "histogram_count(" in native["tokenlat:requests:rate5m"]["expr"]
    assert "_count[5m]" in classic["tokenlat:requests:rate5m"]["expr"]


def test_the_profile_slo_sets_the_thresholds(tmp_path: Path) -> None:
    profile = with_slo(tmp_path, "local", ttft_seconds=4, ttft_quantile=0.9, ttft_objective=0.995, min_request_rate=7)
    rendered = by_name(profile)
    high = rendered["TokenlatTTFTHigh"]["expr"]
    assert high.startswith("tokenlat:ttft_seconds:p90_5m > 4\n") and "tokenlat:requests:rate5m > 7" in high
    assert "histogram_quantile(0.9," in rendered["tokenlat:ttft_seconds:p90_5m"]["expr"]
    burn = rendered["TokenlatTTFTBudgetBurn"]["expr"]
    assert "ratio_rate1h > 0.072" in burn and "ratio_rate30m > 0.03" in burn  # 14.4 and 6 times 0.005
    assert "ratio_rate3d > 0.005" in rendered["TokenlatTTFTBudgetBurnSlow"]["expr"]
    assert "histogram_fraction(0, 4," in rendered["tokenlat:ttft_over_slo:ratio_rate5m"]["expr"]


def test_a_classic_threshold_off_the_boundaries_is_interpolated_and_said_so(tmp_path: Path) -> None:
    profile = load_profile("selfhosted")
    bounds = profile.layout.bounds(semconv.TIME_PER_OUTPUT_TOKEN)
    below = max(b for b in bounds if b < 0.1)
    above = min(b for b in bounds if b > 0.1)
    expr = by_name(profile)["tokenlat:tpot_over_slo:ratio_rate5m"]["expr"]
    weights = dict(re.findall(r'le="([0-9.]+)"\}\[5m\]\)\) \* ([0-9.]+)', expr))
    assert set(weights) == {rules.le_value(below), rules.le_value(above)}
    # Linear between the two boundaries: the weights add up to 1 and favour the nearer boundary.
    assert float(weights[rules.le_value(above)]) == pytest.approx((0.1 - below) / (above - below))
    assert float(weights[rules.le_value(below)]) + float(weights[rules.le_value(above)]) == pytest.approx(1)
    assert "add tpot@0.1 to metrics.buckets" in rules.render(profile)
    exact = tmp_path / "exact.yaml"
    exact.write_text(yaml.safe_dump({"extends": "selfhosted", "metrics": {"buckets": "geometric;ttft@2;tpot@0.1"}}))
    exact_expr = by_name(load_profile(str(exact)))["tokenlat:tpot_over_slo:ratio_rate5m"]["expr"]
    assert 'le="0.1"' in exact_expr and " * " not in exact_expr


def test_native_thresholds_are_exact_at_powers_of_two(tmp_path: Path) -> None:
    assert "TTFT threshold 2s is exact" in rules.render(load_profile("local"))
    assert "TTFT threshold 3s is not a bucket boundary" in rules.render(with_slo(tmp_path, "local", ttft_seconds=3))


def test_runbook_urls_follow_the_profile(tmp_path: Path) -> None:
    profile = with_slo(tmp_path, "local", runbook_url="https://wiki.example/tokenlat/rules")
    assert by_name(profile)["TokenlatErrorRatioHigh"]["annotations"]["runbook_url"] == (
        "https://wiki.example/tokenlat/rules#tokenlaterrorratiohigh"
    )


def test_annotations_expand_the_labels_they_name() -> None:
    summary = by_name(load_profile("local"))["TokenlatTTFTHigh"]["annotations"]["summary"]
    assert rules.expand(summary, {"gen_ai_request_model": "qwen3"}) == "TTFT p95 of qwen3 above 2s"
