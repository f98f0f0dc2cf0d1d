"""The Grafana dashboard (`tokenlat render --what dashboard`, tokenlat_cli/operate/dashboard.py): valid for the SDK's
types, queries for the profile's histograms, thresholds at its SLO values. tests/unit/test_artefacts.py covers its
drift, tests/e2e/test_dashboard.py runs its queries against a real Prometheus."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from click.testing import CliRunner
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models import prometheus, timeseries
from grafana_foundation_sdk.models.dashboard import Dashboard, Panel, RowPanel

from tests.conftest import REPO
from tokenlat import extras, semconv
from tokenlat_cli.main import cli
from tokenlat_cli.operate import dashboard
from tokenlat_cli.profiles import Profile, builtin_names, load_profile
from tokenlat_cli.render import RenderError


def _rendered(profile: Profile) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(dashboard.render(profile))
    return data


def _with(name: str, **changes: dict[str, Any]) -> Profile:
    """Built-in profile ``name`` with some of its sections' fields changed."""
    base = load_profile(name)
    data = copy.deepcopy(base.data)
    for section, fields in changes.items():
        data[section].update(fields)
    return Profile(name, base.source, data)


def _round_trip(data: dict[str, Any]) -> tuple[Dashboard, dict[str, Any]]:
    """The JSON decoded into the SDK's Dashboard model and encoded again: a key the model does not know is dropped
    on the way, a value of the wrong shape fails to decode."""
    register_default_plugins()  # so that panels and queries decode into their plugins' types
    model = Dashboard.from_json(data)
    return model, json.loads(json.dumps(model, cls=JSONEncoder))


def _panels(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["title"]: p for p in data["panels"] if p["type"] != "row"}


@pytest.mark.parametrize("name", builtin_names())
def test_the_json_is_what_the_sdk_types_decode_and_encode_back(name: str) -> None:
    data = _rendered(load_profile(name))
    model, again = _round_trip(data)
    assert again == data
    panels = [p for p in model.panels or [] if not isinstance(p, RowPanel)]
    assert len(panels) == 8
    for panel in panels:
        assert isinstance(panel, Panel) and panel.type_val == "timeseries"
        assert isinstance(panel.options, timeseries.Options)
        assert panel.targets and all(isinstance(t, prometheus.Dataquery) for t in panel.targets)


def test_the_round_trip_catches_what_grafana_would_not_know() -> None:
    data = _rendered(load_profile("local"))
    data["panels"][1]["fieldConfig"]["defaults"]["thresholdz"] = {"mode": "absolute"}
    assert _round_trip(data)[1] != data


def test_native_profiles_read_one_series_per_histogram() -> None:
    panels = _panels(_rendered(load_profile("local")))
    ttft = semconv.prometheus_name(semconv.TTFT_SPEC)
    selected = 'gen_ai_request_model=~"$model", gen_ai_provider_name=~"$provider"'
    assert [t["expr"] for t in panels["Time to first token"]["targets"]] == [
        f"histogram_quantile({q}, sum(rate({ttft}{{{selected}}}[$__rate_interval])))" for q in ("0.5", "0.95", "0.99")
    ]
    (within,) = panels["Requests within the TTFT objective"]["targets"]
    assert within["expr"] == f"histogram_fraction(0, 2, sum(rate({ttft}{{{selected}}}[$__rate_interval])))"
    exprs = " ".join(expr for _, expr in dashboard.targets(_rendered(load_profile("local"))))
    assert "_bucket{" not in exprs and "_count{" not in exprs and "_sum{" not in exprs


def test_classic_profiles_read_buckets() -> None:
    panels = _panels(_rendered(load_profile("aliyun")))
    ttft = semconv.prometheus_name(semconv.TTFT_SPEC)
    selected = 'gen_ai_request_model=~"$model", gen_ai_provider_name=~"$provider"'
    p99 = panels["Time to first token"]["targets"][2]["expr"]
    assert p99 == f"histogram_quantile(0.99, sum by (le) (rate({ttft}_bucket{{{selected}}}[$__rate_interval])))"
    (within,) = panels["Requests within the TTFT objective"]["targets"]
    assert within["expr"] == (
        f'sum(rate({ttft}_bucket{{{selected}, le="2"}}[$__rate_interval])) '
        f"/ sum(rate({ttft}_count{{{selected}}}[$__rate_interval]))"
    )
    assert "histogram_" not in json.dumps(panels).replace("histogram_quantile", "")


def test_classic_buckets_sent_as_native_histograms_are_read_as_native() -> None:
    profile = _with("aliyun", metrics={"native_custom_buckets": True})
    (within,) = _panels(_rendered(profile))["Requests within the TTFT objective"]["targets"]
    assert within["expr"].startswith("histogram_fraction(0, 2, sum(rate(")


def test_threshold_lines_are_the_profiles_slo() -> None:
    slo = {"ttft_seconds": 1.5, "tpot_seconds": 0.05, "ttft_objective": 0.95, "error_ratio": 0.01}
    panels = _panels(_rendered(_with("local", slo=slo)))

    def line(title: str) -> float:
        custom = panels[title]["fieldConfig"]["defaults"]
        assert custom["custom"]["thresholdsStyle"]["mode"] == "dashed"
        base, threshold = custom["thresholds"]["steps"]
        assert base["value"] is None
        return float(threshold["value"])

    assert line("Time to first token") == 1.5
    assert line("Time per output token") == line("Inter-token latency") == 0.05
    assert line("Requests within the TTFT objective") == 0.95
    assert line("Error ratio") == 0.01
    assert "histogram_fraction(0, 1.5, " in panels["Requests within the TTFT objective"]["targets"][0]["expr"]


def test_a_classic_threshold_between_bounds_counts_to_the_bound_below_and_says_so() -> None:
    profile = _with("aliyun", slo={"ttft_seconds": 1.9})
    bound = max(b for b in profile.layout.bounds(semconv.TIME_TO_FIRST_TOKEN) if b <= 1.9)
    assert bound < 1.9
    panel = _panels(_rendered(profile))["Requests within the TTFT objective"]
    assert f'le="{dashboard.number(bound)}"' in panel["targets"][0]["expr"]
    assert "understates" in panel["description"]


def test_a_classic_threshold_below_every_bucket_is_refused(runner: CliRunner) -> None:
    profile = _with("aliyun", slo={"ttft_seconds": 0.001})
    with pytest.raises(RenderError, match=r"slo\.ttft_seconds: 0\.001 s is below every TTFT bucket"):
        dashboard.render(profile)


def test_exemplars_on_the_per_request_latency_panels() -> None:
    panels = _panels(_rendered(load_profile("local")))
    for title, panel in panels.items():
        flags = [t.get("exemplar", False) for t in panel["targets"]]
        expected = title in ("Time to first token", "Time per output token")
        assert flags == ([False, False, True] if expected else [False] * len(flags)), title


def test_variables_and_every_panels_data_source() -> None:
    data = _rendered(load_profile("local"))
    variables = {v["name"]: v for v in data["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    duration = semconv.prometheus_name(semconv.DURATION_SPEC)
    assert variables["model"]["query"] == f"label_values({duration}, gen_ai_request_model)"
    assert variables["provider"]["query"] == (
        f'label_values({duration}{{gen_ai_request_model=~"$model"}}, gen_ai_provider_name)'
    )
    for panel in data["panels"][1:]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    assert len({p["id"] for p in data["panels"]}) == len(data["panels"])


def test_every_query_is_listed_for_the_tests() -> None:
    data = _rendered(load_profile("aliyun"))
    listed = dashboard.targets(data)
    assert len(listed) == 3 * 3 + 1 + 1 + 1 + 2 + 1
    assert ("Energy per output token", listed[-1][1]) == listed[-1] and dashboard.DCGM_POWER in listed[-1][1]


@pytest.mark.parametrize(("value", "text"), [(2.0, "2"), (0.95, "0.95"), (1e-05, "0.00001"), (1.9424, "1.9424")])
def test_numbers_are_spelled_as_the_collector_spells_le(value: float, text: str) -> None:
    assert dashboard.number(value) == text


def test_without_the_sdk_render_says_which_extra_in_one_line(
    runner: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(extras.PARTS["cli"], "dashboard", ("tokenlat_no_such_module",))
    result = runner.invoke(cli, ["render", "--profile", "local", "--what", "dashboard"])
    assert result.exit_code == 1, result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert "tokenlat render --what dashboard needs the tokenlat[cli] extra" in result.output
    assert "pip install 'tokenlat[cli]'" in result.output
    # Nothing else of [cli] needs it.
    assert runner.invoke(cli, ["render", "--profile", "local"]).exit_code == 0


def test_the_doc_explains_every_panel_and_variable() -> None:
    doc = (REPO / "docs" / "dashboard.md").read_text(encoding="utf-8")
    for _, specs in dashboard.panels(load_profile("local")):
        for spec in specs:
            assert f"| {spec.title} |" in doc or f"| {spec.title}, " in doc, spec.title
    for name in ("datasource", *dashboard.VARIABLES):
        assert f"(`{name}`)" in doc, name
    assert "grafana-foundation-sdk==1769699379!11.6.0" in (REPO / "pyproject.toml").read_text(encoding="utf-8")
    assert "grafana-foundation-sdk==1769699379!11.6.0" in doc
