"""The Grafana dashboard of a profile: `tokenlat render --what dashboard`, committed as deploy/<profile>/dashboard.json.

Generated rather than drawn by hand, because what it must say depends on the profile: native histograms are one
series per histogram, read with ``histogram_quantile(q, sum(rate(name[...])))``, classic ones are ``_bucket`` series
read ``sum by (le)``; the share of requests within the TTFT objective is ``histogram_fraction`` on the first and the
bucket at the threshold on the second; and the threshold lines are the profile's ``slo`` values. A hand-drawn
dashboard would drift from all three.

It is built with grafana-foundation-sdk (Apache-2.0: typed builders and models for Grafana 11.6; Grafana itself is
AGPL and is neither used nor needed). The SDK is imported here only, and only when a dashboard is rendered, so that
without it this artefact alone fails, in one line naming the extra. docs/dashboard.md says how to import the
dashboard and how to read each panel; tests/e2e/test_dashboard.py runs every query against a real verify run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from tokenlat import semconv
from tokenlat.extras import require
from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import RenderError

if TYPE_CHECKING:
    from grafana_foundation_sdk.builders.dashboard import Dashboard
    from grafana_foundation_sdk.builders.timeseries import Panel
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

FEATURE = "tokenlat render --what dashboard"
#: The dashboard's variables besides the data source: name -> the Prometheus label it selects on.
VARIABLES: dict[str, str] = {
    "model": semconv.GEN_AI_REQUEST_MODEL.replace(".", "_"),
    "provider": semconv.GEN_AI_PROVIDER_NAME.replace(".", "_"),
}
#: Grafana's window for rate(): at least four scrape intervals (or remote-write flushes) of the data source.
RATE_INTERVAL = "$__rate_interval"
#: The GPU's power draw in watts, as NVIDIA's dcgm-exporter names it.
DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"
QUANTILES = (0.5, 0.95, 0.99)
_TOKEN_TYPE = semconv.GEN_AI_TOKEN_TYPE.replace(".", "_")
_ERROR_TYPE = semconv.ERROR_TYPE.replace(".", "_")
_DATASOURCE_VARIABLE = "datasource"
_WIDTH, _HEIGHT = 8, 8  # three panels a row, on Grafana's 24-column grid


def number(value: float) -> str:
    """``value`` as Go's strconv.FormatFloat(value, 'f', -1, 64) writes it: how the Collector's remote-write exporter
    spells a bucket's ``le`` label (2.0 is "2", 1e-05 is "0.00001"), so a matcher on it finds the bucket."""
    text = format(Decimal(repr(float(value))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


@dataclass(frozen=True)
class PromQL:
    """The dashboard's PromQL for one histogram layout, as per-second rates over Grafana's ``$__rate_interval``.

    ``native``: the backend stores one series per histogram (native histograms, or classic buckets sent as native
    histograms with custom buckets); otherwise ``_bucket``/``_sum``/``_count`` series. ``matchers`` select what the
    dashboard's variables select. (tokenlat_cli/verify/promql.py asks the same questions of whole runs, without
    rates.)
    """

    native: bool
    matchers: str = ""

    def _rate(self, spec: semconv.MetricSpec, suffix: str = "", extra: str = "") -> str:
        name = semconv.prometheus_name(spec) + ("" if self.native else suffix)
        matchers = ", ".join(m for m in (self.matchers, extra) if m)
        return f"rate({name}{{{matchers}}}[{RATE_INTERVAL}])"

    def _aggregate(self, function: str, spec: semconv.MetricSpec, by: str, extra: str) -> str:
        """histogram_count / histogram_sum of the summed rate, or the classic _count / _sum series' summed rate."""
        total = f"sum by ({by}) " if by else "sum"
        if self.native:
            return f"histogram_{function}({total}({self._rate(spec, extra=extra)}))"
        return f"{total}({self._rate(spec, '_' + function, extra)})"

    def per_second(self, spec: semconv.MetricSpec, by: str = "", extra: str = "") -> str:
        """Observations per second (requests, for the per-request histograms)."""
        return self._aggregate("count", spec, by, extra)

    def sum_per_second(self, spec: semconv.MetricSpec, by: str = "", extra: str = "") -> str:
        """The observed values' sum per second (tokens per second, for token usage)."""
        return self._aggregate("sum", spec, by, extra)

    def quantile(self, spec: semconv.MetricSpec, q: float) -> str:
        if self.native:
            return f"histogram_quantile({number(q)}, sum({self._rate(spec)}))"
        return f"histogram_quantile({number(q)}, sum by (le) ({self._rate(spec, '_bucket')}))"

    def fraction_within(self, spec: semconv.MetricSpec, bound: float) -> str:
        """The share of observations at or below ``bound``: histogram_fraction of native histograms (exact at a
        bucket boundary); for classic ones, the cumulative count of the bucket whose upper bound (``le``) it is, over
        the count."""
        if self.native:
            return f"histogram_fraction(0, {number(bound)}, sum({self._rate(spec)}))"
        bucket = 'le="' + number(bound) + '"'
        return f"sum({self._rate(spec, '_bucket', bucket)}) / {self.per_second(spec)}"


def bucket_at_or_below(threshold: float, bounds: Sequence[float]) -> float | None:
    """The largest bucket upper bound at or below ``threshold``; None when every bound is above it."""
    return max((b for b in bounds if b <= threshold), default=None)


@dataclass(frozen=True)
class Threshold:
    """A line on a panel: ``value``, drawn dashed; the side beyond it is ``bad_above`` or below."""

    value: float
    bad_above: bool = True


@dataclass(frozen=True)
class PanelSpec:
    """One panel: its queries (legend -> PromQL) and how to draw them."""

    title: str
    description: str
    unit: str
    queries: dict[str, str]
    threshold: Threshold | None = None
    exemplars: bool = False
    maximum: float | None = None


def native_queries(profile: Profile) -> bool:
    """Whether the backend stores one series per histogram: native histograms, or classic buckets sent as native
    histograms with custom buckets (metrics.native_custom_buckets), as tokenlat_cli/verify/runner.py reads them."""
    return profile.native or bool(profile.data["metrics"]["native_custom_buckets"])


def panels(profile: Profile) -> list[tuple[str, list[PanelSpec]]]:
    """The dashboard's rows and their panels: what the dashboard shows, without Grafana's types (so that docs and
    tests can read it)."""
    slo = profile.data["slo"]
    native = native_queries(profile)
    selected = ", ".join(f'{label}=~"${name}"' for name, label in VARIABLES.items())
    q = PromQL(native, selected)

    # Classic buckets count within their bounds only: at the threshold when it is one (the default layouts make the
    # default 2 s one), else the bound below it.
    ttft_bound = slo["ttft_seconds"]
    if not native:
        ttft_bound = bucket_at_or_below(ttft_bound, profile.layout.bounds(semconv.TIME_TO_FIRST_TOKEN))
    if ttft_bound is None:
        raise RenderError(
            f"{profile.source}: slo.ttft_seconds: {number(slo['ttft_seconds'])} s is below every TTFT bucket bound "
            "of metrics.buckets, so classic histograms cannot count the requests within it"
        )
    approximate = (
        ""
        if ttft_bound == slo["ttft_seconds"]
        else f" The layout has no bucket bound at {number(slo['ttft_seconds'])} s: this counts requests within "
        f"{number(ttft_bound)} s, the bound below it, and so understates the share."
    )
    failed = f'{_ERROR_TYPE}!=""'
    errors = q.per_second(semconv.DURATION_SPEC, extra=failed)
    errors_by_type = q.per_second(semconv.DURATION_SPEC, by=_ERROR_TYPE, extra=failed)
    requests = q.per_second(semconv.DURATION_SPEC)
    output = f'{_TOKEN_TYPE}="output"'
    fleet_output = PromQL(native).sum_per_second(semconv.TOKEN_USAGE_SPEC, extra=output)
    kind = "native histograms" if native else "classic histograms (_bucket series)"

    def quantile_panel(title: str, spec: semconv.MetricSpec, what: str, line: str, exemplars: bool) -> PanelSpec:
        """p50, p95 and p99 of ``spec``, with slo.``line`` drawn."""
        note = (
            "Exemplars (dots) are single requests: hover one for its trace_id."
            if exemplars
            else "No exemplars: the gaps are aggregated per request."
        )
        return PanelSpec(
            title,
            f"p50, p95 and p99 of {what} over the selected models ({kind}). The dashed line is slo.{line} = "
            f"{number(slo[line])} s. {note}",
            "s",
            {f"p{number(100 * p)}": q.quantile(spec, p) for p in QUANTILES},
            Threshold(slo[line]),
            exemplars=exemplars,
        )

    latency = [
        quantile_panel("Time to first token", semconv.TTFT_SPEC, "TTFT", "ttft_seconds", True),
        quantile_panel(
            "Time per output token",
            semconv.TPOT_SPEC,
            "TPOT, one value per request (the time after the first token over the tokens after it)",
            "tpot_seconds",
            True,
        ),
        quantile_panel(
            "Inter-token latency",
            semconv.ITL_SPEC,
            "every gap between consecutive output tokens, the stalls TPOT averages away",
            "tpot_seconds",
            False,
        ),
    ]
    traffic = [
        PanelSpec(
            "Requests within the TTFT objective",
            f"Share of requests whose TTFT was at most {number(ttft_bound)} s. The dashed line is the objective "
            f"(slo.ttft_objective = {number(slo['ttft_objective'])}); below it the error budget burns.{approximate}",
            "percentunit",
            {"within": q.fraction_within(semconv.TTFT_SPEC, ttft_bound)},
            Threshold(slo["ttft_objective"], bad_above=False),
            maximum=1.0,
        ),
        PanelSpec(
            "Requests per second",
            "Finished requests per second (failed ones included), per model. Below the dashed line "
            f"(slo.min_request_rate = {number(slo['min_request_rate'])}/s) the latency alerts stay silent.",
            "reqps",
            {"{{" + VARIABLES["model"] + "}}": q.per_second(semconv.DURATION_SPEC, by=VARIABLES["model"])},
            Threshold(slo["min_request_rate"], bad_above=False),
        ),
        PanelSpec(
            "Tokens per second",
            "Input (prompt) and output (generated) tokens per second over the selected models.",
            "short",
            {"{{" + _TOKEN_TYPE + "}}": q.sum_per_second(semconv.TOKEN_USAGE_SPEC, by=_TOKEN_TYPE)},
        ),
    ]
    health = [
        PanelSpec(
            "Error ratio",
            "Share of requests that failed, in all and per error.type (an exception's class name, or cancelled for a "
            f"client that went away). The dashed line is slo.error_ratio = {number(slo['error_ratio'])}.",
            "percentunit",
            {
                "all": f"({errors} or vector(0)) / {requests}",
                "{{" + _ERROR_TYPE + "}}": f"{errors_by_type} / ignoring({_ERROR_TYPE}) group_left() {requests}",
            },
            Threshold(slo["error_ratio"]),
        ),
        PanelSpec(
            "Energy per output token",
            f"Joules per output token: the power every GPU reports ({DCGM_POWER}, watts, from NVIDIA's dcgm-exporter) "
            "over the output tokens per second of every model. For the whole fleet in this data source, whatever "
            "model is selected: GPU power has no model label.",
            "J",
            {"J/token": f"sum(avg_over_time({DCGM_POWER}[{RATE_INTERVAL}])) / {fleet_output}"},
        ),
    ]
    return [("Latency", latency), ("SLO and traffic", traffic), ("Errors and energy", health)]


def render(profile: Profile) -> str:
    """The dashboard's JSON, as Grafana imports it (sorted keys, so that a change shows as a small diff)."""
    require("cli", FEATURE, part="dashboard")
    from grafana_foundation_sdk.cog.encoder import JSONEncoder

    return json.dumps(build(profile).build(), cls=JSONEncoder, sort_keys=True, indent=2) + "\n"


def build(profile: Profile) -> Dashboard:
    """The dashboard, as the SDK's builder."""
    from grafana_foundation_sdk.builders.dashboard import Dashboard as DashboardBuilder
    from grafana_foundation_sdk.builders.dashboard import DatasourceVariable, QueryVariable, Row
    from grafana_foundation_sdk.models.dashboard import (
        DashboardCursorSync,
        DataSourceRef,
        VariableOption,
        VariableRefresh,
        VariableSort,
    )

    datasource = DataSourceRef(type_val="prometheus", uid=f"${{{_DATASOURCE_VARIABLE}}}")
    count_series = semconv.prometheus_name(semconv.DURATION_SPEC) + ("" if native_queries(profile) else "_count")
    dashboard = (
        DashboardBuilder(f"tokenlat: token latency ({profile.name})")
        .uid(re.sub(r"[^A-Za-z0-9_-]", "-", f"tokenlat-{profile.name}")[:40])
        .description(
            f"TTFT, TPOT, inter-token latency, SLO, traffic, errors and energy per token, as profile {profile.name} "
            "delivers them. Generated by `tokenlat render --what dashboard`: edit the profile, not this file."
        )
        .tags(["tokenlat", "llm"])
        .editable()
        .tooltip(DashboardCursorSync.CROSSHAIR)
        .time("now-1h", "now")
        .refresh("30s")
        .with_variable(DatasourceVariable(_DATASOURCE_VARIABLE).label("Data source").type("prometheus"))
    )
    everything = VariableOption(selected=True, text=["All"], value=["$__all"])
    narrowing = ""
    for name, label in VARIABLES.items():
        dashboard = dashboard.with_variable(
            QueryVariable(name)
            .label(name.capitalize())
            .datasource(datasource)
            .query(f"label_values({count_series}{narrowing}, {label})")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .current(everything)
        )
        narrowing = f'{{{label}=~"${name}"}}'  # the next variable lists only what the previous one selects
    panel_id = 0
    for title, specs in panels(profile):
        panel_id += 1
        dashboard = dashboard.with_row(Row(title).id(panel_id))
        for spec in specs:
            panel_id += 1
            dashboard = dashboard.with_panel(_panel(spec, panel_id, datasource))
    return dashboard


def _panel(spec: PanelSpec, panel_id: int, datasource: DataSourceRef) -> Panel:
    from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, VizLegendOptions
    from grafana_foundation_sdk.builders.dashboard import ThresholdsConfig
    from grafana_foundation_sdk.builders.prometheus import Dataquery
    from grafana_foundation_sdk.builders.timeseries import Panel
    from grafana_foundation_sdk.models.common import GraphThresholdsStyleMode, LegendDisplayMode, LegendPlacement
    from grafana_foundation_sdk.models.dashboard import Threshold as Step
    from grafana_foundation_sdk.models.dashboard import ThresholdsMode

    panel = (
        Panel()
        .id(panel_id)
        .title(spec.title)
        .description(spec.description)
        .datasource(datasource)
        .unit(spec.unit)
        .min(0)
        .span(_WIDTH)
        .height(_HEIGHT)
        .legend(
            VizLegendOptions().show_legend(True).display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM)
        )
    )
    if spec.maximum is not None:
        panel = panel.max(spec.maximum)
    for index, (legend, expr) in enumerate(spec.queries.items()):
        query = Dataquery().ref_id(chr(ord("A") + index)).expr(expr).legend_format(legend).range()
        # Every quantile of a panel reads the same series, so they share its exemplars: fetched once, with the last.
        if spec.exemplars and index == len(spec.queries) - 1:
            query = query.exemplar(True)
        panel = panel.with_target(query)
    # Set on every panel, drawn or not: the SDK's model decodes a panel without it as if it were set to "off", and
    # the unit test's round trip through that model must give back exactly what was rendered.
    style = GraphThresholdsStyleMode.OFF
    if spec.threshold is not None:
        good, bad = ("green", "red") if spec.threshold.bad_above else ("red", "green")
        steps = [Step(value=None, color=good), Step(value=spec.threshold.value, color=bad)]
        panel = panel.thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
        style = GraphThresholdsStyleMode.DASHED
    return panel.thresholds_style(GraphThresholdsStyleConfig().mode(style))


def targets(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every query in a rendered dashboard's JSON, for tests and docs."""
    return [(panel["title"], target["expr"]) for panel in dashboard["panels"] for target in panel.get("targets", ())]
