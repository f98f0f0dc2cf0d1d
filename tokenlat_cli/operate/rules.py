"""Prometheus recording and alerting rules from a profile (`tokenlat render --what rules`, deploy/<profile>/rules.yaml).

Why rules are rendered and not written by hand: the PromQL differs by how the histograms arrive (classic
``_bucket``/``_count``/``_sum`` series, or one native-histogram series per attribute set, which native histograms
with custom buckets are too), the SLO thresholds and objective are the profile's, and "the share of requests over the
threshold" is exact only where the threshold is a bucket boundary of the profile's layout. One renderer keeps all of
that consistent; `promtool test rules` (tests/e2e/test_rules.py) checks what the rendered rules do, and
docs/rules.md says what each rule means and what to do when an alert fires (the runbook_url anchors).

Every latency, rate and ratio is recorded per model and provider (``BY``: the labels the Collector gives
``gen_ai.request.model`` and ``gen_ai.provider.name``). Recording rules follow Prometheus' ``level:metric:operation``
naming with the level ``tokenlat`` standing for "by model and provider".
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import yaml

from tokenlat import semconv
from tokenlat_cli.profiles import Profile

BY = "gen_ai_provider_name, gen_ai_request_model"
LABELS = ("gen_ai_provider_name", "gen_ai_request_model")
QUANTILES = (0.5, 0.95, 0.99)
WINDOW = "5m"
# The Google SRE workbook's multiwindow, multi-burn-rate alerts (chapter 5, "Alerting on SLOs", table 5-8): the
# long window's burn rate, the short window that makes the alert stop soon after the burn stops, and the severity.
# 14.4 over 1h spends 2% of a 30-day budget; 6 over 6h spends 5%; 1 over 3d spends 10%.
BURN_RATES: tuple[tuple[float, str, str, str], ...] = (
    (14.4, "1h", "5m", "page"),
    (6.0, "6h", "30m", "page"),
    (1.0, "3d", "6h", "ticket"),
)
BURN_WINDOWS = ("5m", "30m", "1h", "6h", "3d")
# TPOT regression: the median over the last 30 minutes this much above the same half hour a day before.
TPOT_REGRESSION_FACTOR = 1.25
# A client that hangs up is not a failure of the service: error.type="cancelled" is not counted as an error.
NOT_ERRORS = "cancelled"
# The Collector's own metrics (its telemetry endpoint, scraped by the same Prometheus). Counters have no _total
# suffix in the Collector release the project pins (collector/VERSION), and have it in releases whose telemetry
# adds suffixes: the regular expression takes both.
COLLECTOR_ACCEPTED = '{__name__=~"otelcol_receiver_accepted_metric_points(_total)?"}'
COLLECTOR_FAILED = '{__name__=~"otelcol_exporter_(send|enqueue)_failed_metric_points(_total)?"}'
WAL_LAG = "otelcol_exporter_prometheusremotewrite_wal_lag"
WAL_FAILURES = '{__name__=~"otelcol_exporter_prometheusremotewrite_wal_(writes|reads)_failures(_total)?"}'
# DCGM exporter: power draw per GPU in watts, with namespace and pod when it maps GPUs to pods.
DCGM_POWER = "DCGM_FI_DEV_POWER_USAGE"
# Annotations name the alert's model and provider (Prometheus expands them when the alert fires).
MODEL = "{{ $labels.gen_ai_request_model }}"
PROVIDER = "{{ $labels.gen_ai_provider_name }}"


def le_value(bound: float) -> str:
    """A boundary as the Collector writes it into ``le`` (Go's strconv.FormatFloat(bound, 'f', -1, 64): the
    shortest digits that round-trip, never an exponent), so that ``le="2"`` selects exactly that bucket."""
    text = format(Decimal(repr(float(bound))), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def number(value: float) -> str:
    """A threshold as PromQL reads it, without floating-point noise (1 - 0.99 is 0.010000000000000009)."""
    return f"{value:.12g}"


def quantile_name(q: float) -> str:
    """0.95 -> p95, 0.5 -> p50, 0.999 -> p999: the operation part of a quantile's recording rule."""
    return "p" + number(q * 100).replace(".", "")


@dataclass(frozen=True)
class Histogram:
    """PromQL over one histogram as it arrives: native (one series per attribute set) or classic buckets."""

    spec: semconv.MetricSpec
    native: bool
    bounds: tuple[float, ...]

    @property
    def name(self) -> str:
        return semconv.prometheus_name(self.spec)

    def _rate(self, suffix: str, window: str, matchers: str, by: str, offset: str = "") -> str:
        selector = f"{{{matchers}}}" if matchers else ""
        shift = f" offset {offset}" if offset else ""
        return f"sum by ({by}) (rate({self.name}{suffix}{selector}[{window}]{shift}))"

    def quantile(self, q: float, window: str = WINDOW, offset: str = "") -> str:
        if self.native:
            return f"histogram_quantile({q:g}, {self._rate('', window, '', BY, offset)})"
        return f"histogram_quantile({q:g}, {self._rate('_bucket', window, '', f'le, {BY}', offset)})"

    def count_rate(self, window: str = WINDOW, matchers: str = "", by: str = BY) -> str:
        if self.native:
            return f"histogram_count({self._rate('', window, matchers, by)})"
        return self._rate("_count", window, matchers, by)

    def sum_rate(self, window: str = WINDOW, matchers: str = "", by: str = BY) -> str:
        if self.native:
            return f"histogram_sum({self._rate('', window, matchers, by)})"
        return self._rate("_sum", window, matchers, by)

    def exact_at(self, threshold: float) -> bool:
        """Whether the share of observations up to ``threshold`` is a count, not an interpolation. Native
        exponential histograms (scale 6) have boundaries at 2**(i/64): exact for powers of two such as 2 s."""
        if self.native and not self.bounds:
            return math.log2(threshold) * 64 == round(math.log2(threshold) * 64)
        return threshold in self.bounds

    def share_over(self, threshold: float, window: str) -> str:
        """The share of observations above ``threshold``: histogram_fraction for native histograms (custom
        buckets included); for classic buckets the bucket ``le=threshold`` over the count, and where the
        threshold is not a boundary, linear interpolation between the two boundaries around it (as
        histogram_quantile interpolates)."""
        if self.native:
            return f"1 - histogram_fraction(0, {number(threshold)}, {self._rate('', window, '', BY)})"
        total = self._rate("_count", window, "", BY)
        if threshold in self.bounds:
            return f"1 - {self._bucket(threshold, window)} / {total}"
        below = max((b for b in self.bounds if b < threshold), default=0.0)
        above = min((b for b in self.bounds if b > threshold), default=math.inf)
        if math.isinf(above):  # past the last boundary: everything above it counts as over
            return f"1 - {self._bucket(below, window)} / {total}"
        weight = (threshold - below) / (above - below)
        upper = f"{self._bucket(above, window)} * {number(weight)}"
        if below == 0.0:
            return f"1 - {upper} / {total}"
        return f"1 - ({self._bucket(below, window)} * {number(1 - weight)} + {upper}) / {total}"

    def _bucket(self, bound: float, window: str) -> str:
        return self._rate("_bucket", window, f'le="{le_value(bound)}"', BY)


class Rules:
    """The rule groups of one profile."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.slo: dict[str, Any] = profile.data["slo"]
        metrics = profile.data["metrics"]
        # Native histograms with custom buckets are queried like native ones, at the classic boundaries.
        native = profile.native or bool(metrics["native_custom_buckets"])
        layout = profile.layout

        def histogram(spec: semconv.MetricSpec) -> Histogram:
            return Histogram(spec, native, () if profile.native else layout.bounds(spec.name))

        self.ttft = histogram(semconv.TTFT_SPEC)
        self.tpot = histogram(semconv.TPOT_SPEC)
        self.itl = histogram(semconv.ITL_SPEC)
        self.duration = histogram(semconv.DURATION_SPEC)
        self.tokens = histogram(semconv.TOKEN_USAGE_SPEC)

    # -- recording rules ------------------------------------------------------------------------------------------

    def latency(self) -> list[dict[str, Any]]:
        quantiles = sorted({*QUANTILES, self.slo["ttft_quantile"]})
        rules = [
            record(f"tokenlat:{short}_seconds:{quantile_name(q)}_{WINDOW}", hist.quantile(q))
            for short, hist, qs in (
                ("ttft", self.ttft, quantiles),
                ("tpot", self.tpot, QUANTILES),
                ("itl", self.itl, QUANTILES),
            )
            for q in qs
        ]
        requests = self.duration.count_rate()
        errors = self.duration.count_rate(matchers=f'error_type!~"|{NOT_ERRORS}"')
        rules += [
            record(f"tokenlat:requests:rate{WINDOW}", requests),
            record(f"tokenlat:tokens:rate{WINDOW}", self.tokens.sum_rate(by=f"{BY}, gen_ai_token_type")),
            record(f"tokenlat:request_errors:ratio_rate{WINDOW}", f"({errors} or 0 * {requests})\n/\n{requests}"),
            record(
                f"tokenlat:tpot_over_slo:ratio_rate{WINDOW}", self.tpot.share_over(self.slo["tpot_seconds"], WINDOW)
            ),
        ]
        return rules

    def burn(self) -> list[dict[str, Any]]:
        return [
            record(f"tokenlat:ttft_over_slo:ratio_rate{w}", self.ttft.share_over(self.slo["ttft_seconds"], w))
            for w in BURN_WINDOWS
        ]

    def energy(self) -> list[dict[str, Any]]:
        """Joules per output token: watts (joules per second) over output tokens per second, joined per pod. The
        tokens side gets namespace and pod from target_info (the service's k8s.namespace.name and k8s.pod.name
        resource attributes, which the Collector keeps there, joined on job and instance); docs/rules.md says
        what to change when the labels do not line up."""
        output = self.tokens.sum_rate(matchers='gen_ai_token_type="output"', by=f"job, instance, {BY}")
        pods = 'group by (job, instance, k8s_namespace_name, k8s_pod_name) (target_info{k8s_pod_name!=""})'
        joined = f"{output}\n* on (job, instance) group_left (k8s_namespace_name, k8s_pod_name)\n{pods}"
        by_pod = f"sum by (k8s_namespace_name, k8s_pod_name, {BY}) (\n{indent(joined)}\n)"
        renamed = relabel(relabel(by_pod, "namespace", "k8s_namespace_name"), "pod", "k8s_pod_name")
        tokens = "tokenlat:output_tokens:rate5m_pod"
        power = "tokenlat:gpu_power_watts:pod"
        # A pod's power is shared among the models it served in proportion to their tokens (LoRA adapters, several
        # models in one server), so that summing by model counts every watt once.
        share = (
            f"{tokens}\n/ on (namespace, pod) group_left\nsum by (namespace, pod) ({tokens})\n"
            f"* on (namespace, pod) group_left\n{power}"
        )
        return [
            record(power, f'sum by (namespace, pod) ({DCGM_POWER}{{pod!=""}})'),
            record(tokens, f"sum without (k8s_namespace_name, k8s_pod_name) (\n{indent(renamed)}\n)"),
            record(
                "tokenlat:energy_per_output_token_joules:pod",
                f"{power}\n/ on (namespace, pod)\nsum by (namespace, pod) ({tokens})",
            ),
            record("tokenlat:gpu_power_watts:model", f"sum by ({BY}) (\n{indent(share)}\n)"),
            record(
                "tokenlat:energy_per_output_token_joules:model",
                f"tokenlat:gpu_power_watts:model\n/ on ({BY})\nsum by ({BY}) ({tokens})",
            ),
        ]

    # -- alerts ---------------------------------------------------------------------------------------------------

    def alert(self, *args: Any) -> dict[str, Any]:
        return alert(self.slo["runbook_url"], *args)

    def busy(self) -> str:
        """Only where there are enough requests to judge latency by (slo.min_request_rate)."""
        return f"and on ({BY})\ntokenlat:requests:rate{WINDOW} > {number(self.slo['min_request_rate'])}"

    def slo_alerts(self) -> list[dict[str, Any]]:
        slo = self.slo
        ttft_q = f"tokenlat:ttft_seconds:{quantile_name(slo['ttft_quantile'])}_{WINDOW}"
        p = quantile_name(slo["ttft_quantile"])
        rules = [
            self.alert(
                "TokenlatTTFTHigh",
                f"{ttft_q} > {number(slo['ttft_seconds'])}\n{self.busy()}",
                slo["for"],
                "page",
                f"TTFT {p} of {MODEL} above {number(slo['ttft_seconds'])}s",
                f"The {p} time to first token of {MODEL} "
                f"({PROVIDER}) has been above {number(slo['ttft_seconds'])}s for "
                f"{slo['for']} at more than {number(slo['min_request_rate'])} requests/s.",
            )
        ]
        budget = 1 - slo["ttft_objective"]
        for severity in ("page", "ticket"):
            conditions = [
                f"(\n  tokenlat:ttft_over_slo:ratio_rate{long} > {number(rate * budget)}\nand\n"
                f"  tokenlat:ttft_over_slo:ratio_rate{short} > {number(rate * budget)}\n)"
                for rate, long, short, sev in BURN_RATES
                if sev == severity
            ]
            windows = ", ".join(f"{number(r)}x over {lw}/{sw}" for r, lw, sw, s in BURN_RATES if s == severity)
            rules.append(
                self.alert(
                    "TokenlatTTFTBudgetBurn" if severity == "page" else "TokenlatTTFTBudgetBurnSlow",
                    "\nor\n".join(conditions),
                    None,
                    severity,
                    f"{MODEL} is spending its TTFT error budget too fast",
                    f"More than {number(budget * 100)}% of the requests to {MODEL} "
                    f"({PROVIDER}) take longer than {number(slo['ttft_seconds'])}s to the "
                    f"first token, at a burn rate of {windows} (objective {number(slo['ttft_objective'] * 100)}%).",
                )
            )
        tpot = number(slo["tpot_seconds"])
        regression = (
            f"{self.tpot.quantile(0.5, '30m')}\n> {number(TPOT_REGRESSION_FACTOR)} *\n"
            f"{self.tpot.quantile(0.5, '30m', '1d')}"
        )
        rules += [
            self.alert(
                "TokenlatTPOTHigh",
                f"tokenlat:tpot_seconds:p95_{WINDOW} > {tpot}\n{self.busy()}",
                slo["for"],
                "ticket",
                f"TPOT p95 of {MODEL} above {tpot}s",
                f"The p95 time per output token of {MODEL} ({PROVIDER}) has been above {tpot}s for {slo['for']}.",
            ),
            self.alert(
                "TokenlatTPOTRegression",
                f"{regression}\n{self.busy()}",
                "30m",
                "ticket",
                f"TPOT of {MODEL} regressed against yesterday",
                f"The median time per output token of {MODEL} "
                f"({PROVIDER}) over the last 30 minutes is more than "
                f"{number(TPOT_REGRESSION_FACTOR)} times the same half hour a day before.",
            ),
            self.alert(
                "TokenlatErrorRatioHigh",
                f"tokenlat:request_errors:ratio_rate{WINDOW} > {number(slo['error_ratio'])}",
                slo["for"],
                "page",
                f"More than {number(slo['error_ratio'] * 100)}% of requests to {MODEL} fail",
                f"Over {number(slo['error_ratio'] * 100)}% of the requests to {MODEL} "
                f"({PROVIDER}) have ended with an error.type other than {NOT_ERRORS} "
                f"for {slo['for']}.",
            ),
        ]
        return rules

    def pipeline_alerts(self) -> list[dict[str, Any]]:
        present = self.duration.name if self.duration.native else f"{self.duration.name}_count"
        return [
            self.alert(
                "TokenlatMetricsAbsent",
                f"absent_over_time({present}[15m])",
                None,
                "ticket",
                "No tokenlat metrics have arrived for 15 minutes",
                f"Prometheus has no {present} sample of the last 15 minutes: no instrumented service is "
                "running, or the Collector or remote write to this backend is broken.",
            ),
            self.alert(
                "TokenlatPipelineBroken",
                f"sum(rate({COLLECTOR_ACCEPTED}[5m])) > 0\nunless on ()\ncount({present})",
                "10m",
                "page",
                "The Collector receives metrics but none reach Prometheus",
                f"The tokenlat Collector accepts metric points from services, yet Prometheus has no {present} "
                "series: remote write from the Collector to this backend is failing or going elsewhere.",
            ),
            self.alert(
                "TokenlatCollectorExportFailures",
                f"sum by (job, instance, exporter) (rate({COLLECTOR_FAILED}[5m])) > 0",
                "10m",
                "ticket",
                "The Collector {{ $labels.instance }} is dropping metric points",
                "The {{ $labels.exporter }} exporter of the Collector {{ $labels.instance }} has failed to send or "
                "enqueue metric points for 10 minutes: they are lost.",
            ),
            self.alert(
                "TokenlatCollectorWALLag",
                f"min_over_time({WAL_LAG}[15m]) > 0\nor\n"
                f"sum by (job, instance, exporter) (rate({WAL_FAILURES}[5m])) > 0",
                "5m",
                "ticket",
                "The write-ahead log of the Collector {{ $labels.instance }} does not drain",
                "The remote-write WAL of the Collector {{ $labels.instance }} has held unsent entries for 15 "
                "minutes, or fails to write or read: the backend is unreachable or refuses the data, and the WAL "
                "directory grows.",
            ),
        ]

    def groups(self) -> list[dict[str, Any]]:
        return [
            {"name": "tokenlat-recording", "rules": self.latency()},
            {"name": "tokenlat-slo-burn", "rules": self.burn()},
            {"name": "tokenlat-energy", "rules": self.energy()},
            {"name": "tokenlat-alerts", "rules": self.slo_alerts()},
            {"name": "tokenlat-pipeline-alerts", "rules": self.pipeline_alerts()},
        ]


def indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())


def relabel(expr: str, to: str, source: str) -> str:
    return f'label_replace(\n{indent(expr)},\n  "{to}", "$1", "{source}", "(.*)"\n)'


def record(name: str, expr: str) -> dict[str, Any]:
    return {"record": name, "expr": expr}


def alert(
    runbook: str, name: str, expr: str, duration: str | None, severity: str, summary: str, description: str
) -> dict[str, Any]:
    """An alert with the labels and annotations every tokenlat alert has; runbook_url points at its section of
    docs/rules.md (``runbook``, slo.runbook_url; the heading is the alert's name, so the anchor is its name in
    lower case)."""
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if duration:
        rule["for"] = duration
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {
        "summary": summary,
        "description": description,
        "runbook_url": f"{runbook}#{name.lower()}",
    }
    return rule


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, so the rendered PromQL reads as written."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def alert_names(groups: Iterable[dict[str, Any]]) -> list[str]:
    return [rule["alert"] for group in groups for rule in group["rules"] if "alert" in rule]


def render(profile: Profile) -> str:
    """deploy/<profile>/rules.yaml: a Prometheus rule file (`promtool check rules`, rule_files, or a rule console)."""
    rules = Rules(profile)
    kind = "native" if profile.native else "classic"
    if profile.data["metrics"]["native_custom_buckets"]:
        kind = "classic, sent as native histograms with custom buckets"
    notes = [
        f"Prometheus rules of the tokenlat profile {profile.name}: rendered by `tokenlat render --profile "
        f"{profile.name} --what rules`; do not edit (docs/rules.md explains every rule and alert).",
        f"Histograms: {kind}. SLO: TTFT {quantile_name(rules.slo['ttft_quantile'])} <= "
        f"{number(rules.slo['ttft_seconds'])}s for {number(rules.slo['ttft_objective'] * 100)}% of requests, "
        f"TPOT <= {number(rules.slo['tpot_seconds'])}s, errors <= {number(rules.slo['error_ratio'] * 100)}%, "
        f"latency alerts above {number(rules.slo['min_request_rate'])} requests/s.",
    ]
    for short, hist, threshold in (
        ("TTFT", rules.ttft, rules.slo["ttft_seconds"]),
        ("TPOT", rules.tpot, rules.slo["tpot_seconds"]),
    ):
        if hist.exact_at(threshold):
            notes.append(
                f"{short} threshold {number(threshold)}s is exact: a bucket boundary, so the share over it is a count."
            )
        else:
            metric = "ttft" if short == "TTFT" else "tpot"
            notes.append(
                f"{short} threshold {number(threshold)}s is not a bucket boundary: the share over it is interpolated "
                f"within one bucket; add {metric}@{number(threshold)} to metrics.buckets to make it exact."
            )
    header = "".join(f"# {line}\n" for line in notes)
    body = yaml.dump({"groups": rules.groups()}, Dumper=_Dumper, sort_keys=False, width=1000, allow_unicode=True)
    return header + body


def expand(template: str, labels: dict[str, str]) -> str:
    """An annotation as Prometheus expands it, for annotations that use only ``{{ $labels.NAME }}`` (tests)."""
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template)
