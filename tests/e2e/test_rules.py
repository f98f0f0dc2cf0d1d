"""The rendered Prometheus rules (deploy/<profile>/rules.yaml) load, and do what docs/rules.md says, in promtool.

`promtool check rules` runs on every built-in profile's rules with Debian's promtool (2.42) and the pinned promtool
3 (built with Prometheus 3 by `make prometheus3`). `promtool test rules` runs scenarios generated here from the
profile's own values (thresholds, objective, minimum request rate, bucket layout), against a classic profile
(selfhosted, with both promtools) and a native one (local, with promtool 3 only: native-histogram input series need
promtool 2.5x or later). Each alert is shown firing where it should and silent where it should not.
"""

from __future__ import annotations

import math
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import _find_debian_prometheus, _require
from tokenlat import semconv
from tokenlat_cli.binaries import cached_build_path, find_binary
from tokenlat_cli.operate import rules as rules_module
from tokenlat_cli.profiles import Profile, builtin_names, load_profile
from tokenlat_cli.verify.processes import ServiceError
from tokenlat_cli.verify.prometheus import PROMETHEUS3_VERSION, prometheus_release

PROMTOOL3_ENV = "TOKENLAT_PROMTOOL3_BIN"
MODEL = {"gen_ai_provider_name": "vllm", "gen_ai_request_model": "qwen3-32b"}
SERVICE = {"job": "llm/vllm", "instance": "vllm-0-0a1b"}
COLLECTOR = {"job": "tokenlat-collector", "instance": "collector-0:8888"}
# Native histograms arrive at the exponential histograms' scale 6 (docs/metrics.md).
SCHEMA = 6


def find_promtool3() -> Path:
    """$TOKENLAT_PROMTOOL3_BIN, else the promtool `make prometheus3` builds next to Prometheus 3."""
    how = f"run `make prometheus3` to build promtool {prometheus_release()}"
    installed = cached_build_path("promtool", PROMETHEUS3_VERSION)
    return find_binary("promtool", PROMTOOL3_ENV, how, ServiceError, [installed], search_path=False)


def find_debian_promtool() -> Path:
    """Debian's promtool 2.42, from the prometheus package next to Debian's Prometheus."""
    promtool = _find_debian_prometheus().with_name("promtool")
    if not promtool.is_file():
        raise ServiceError(f"{promtool} is missing: `apt-get install prometheus`")
    return promtool


@pytest.fixture(scope="session")
def promtool3() -> Path:
    return _require(find_promtool3)


@pytest.fixture(scope="session")
def debian_promtool() -> Path:
    return _require(find_debian_promtool)


def run(promtool: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(promtool), *map(str, args)], capture_output=True, text=True, timeout=300, check=False)


# -- input series ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    """``minutes`` of traffic to one model: requests per second, and the share of requests at each value."""

    minutes: int
    rate: float
    values: dict[float, float]

    def per_minute(self, share: float = 1.0) -> float:
        return self.rate * 60 * share

    def at_most(self, bound: float) -> float:
        return sum(share for value, share in self.values.items() if value <= bound)

    def mean(self) -> float:
        return sum(value * share for value, share in self.values.items())


def _segments(phases: list[Phase], increment: Any, zero: Any, add: Any, show: Any) -> str:
    """Promtool's expanding notation over consecutive phases, continuous across them: ``a+bxn`` per phase."""
    parts, value = [], zero
    for i, phase in enumerate(phases):
        step = increment(phase)
        value = value if i == 0 else add(value, step)
        parts.append(f"{show(value)}+{show(step)}x{phase.minutes - 1}")
        value = add(value, step, phase.minutes - 1)
    return " ".join(parts)


def _scalar(phases: list[Phase], increment: Any) -> str:
    return _segments(phases, increment, 0.0, lambda v, s, n=1: v + s * n, lambda v: f"{v:g}")


def _labels(labels: dict[str, str]) -> str:
    return ", ".join(f'{k}="{v}"' for k, v in labels.items())


def classic(name: str, bounds: tuple[float, ...], phases: list[Phase], labels: dict[str, str]) -> list[dict[str, str]]:
    """The _bucket, _count and _sum series of a classic histogram that receives ``phases``."""
    series = [
        {
            "series": f"{name}_bucket{{{_labels({**labels, 'le': rules_module.le_value(b)})}}}",
            "values": _scalar(phases, lambda p, b=b: p.per_minute(p.at_most(b))),
        }
        for b in bounds
    ]
    series.append(
        {"series": f"{name}_bucket{{{_labels({**labels, 'le': '+Inf'})}}}", "values": _scalar(phases, Phase.per_minute)}
    )
    series.append({"series": f"{name}_count{{{_labels(labels)}}}", "values": _scalar(phases, Phase.per_minute)})
    series.append(
        {"series": f"{name}_sum{{{_labels(labels)}}}", "values": _scalar(phases, lambda p: p.per_minute(p.mean()))}
    )
    return series


def bucket_index(value: float) -> int:
    """The native bucket holding ``value`` at SCHEMA: (2**((i-1)/2**SCHEMA), 2**(i/2**SCHEMA)]."""
    return math.ceil(math.log2(value) * 2**SCHEMA)


def native(name: str, phases: list[Phase], labels: dict[str, str]) -> list[dict[str, str]]:
    """One native-histogram series that receives ``phases``, in promtool's {{...}} notation."""
    indices = [bucket_index(v) for p in phases for v in p.values]
    low, high = min(indices), max(indices)

    def increment(p: Phase) -> tuple[float, float, list[float]]:
        counts = [0.0] * (high - low + 1)
        for value, share in p.values.items():
            counts[bucket_index(value) - low] += p.per_minute(share)
        return p.per_minute(), p.per_minute(p.mean()), counts

    def add(v: Any, s: Any, n: int = 1) -> Any:
        return v[0] + s[0] * n, v[1] + s[1] * n, [a + b * n for a, b in zip(v[2], s[2], strict=True)]

    def show(v: Any) -> str:
        buckets = " ".join(f"{c:g}" for c in v[2])
        return f"{{{{schema:{SCHEMA} count:{v[0]:g} sum:{v[1]:g} offset:{low} buckets:[{buckets}]}}}}"

    zero = (0.0, 0.0, [0.0] * (high - low + 1))
    return [{"series": f"{name}{{{_labels(labels)}}}", "values": _segments(phases, increment, zero, add, show)}]


@dataclass
class Traffic:
    """Series of one scenario for one profile: histograms as the profile's layout has them, plus plain series."""

    profile: Profile
    series: list[dict[str, str]] = field(default_factory=list)

    def histogram(self, spec: semconv.MetricSpec, phases: list[Phase], **extra: str) -> Traffic:
        labels = {**SERVICE, **MODEL, **extra}
        name = semconv.prometheus_name(spec)
        if self.profile.native:
            self.series += native(name, phases, labels)
        else:
            self.series += classic(name, self.profile.layout.bounds(spec.name), phases, labels)
        return self

    def requests(self, phases: list[Phase], ttft: bool = True, tpot: bool = False) -> Traffic:
        """Requests (the duration histogram) whose TTFT and TPOT are ``phases``' values."""
        self.histogram(semconv.DURATION_SPEC, [Phase(p.minutes, p.rate, {1.0: 1.0}) for p in phases])
        for wanted, spec in ((ttft, semconv.TTFT_SPEC), (tpot, semconv.TPOT_SPEC)):
            if wanted:
                self.histogram(spec, phases)
        return self

    def plain(self, name: str, labels: dict[str, str], values: str) -> Traffic:
        self.series.append({"series": f"{name}{{{_labels(labels)}}}", "values": values})
        return self


# -- expectations ---------------------------------------------------------------------------------------------------


class Scenarios:
    """promtool test cases for one profile's rendered rules, built from the profile's values."""

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.slo = profile.data["slo"]
        groups = yaml.safe_load(rules_module.render(profile))["groups"]
        self.alerts = {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}
        self.tests: list[dict[str, Any]] = []

    def traffic(self) -> Traffic:
        return Traffic(self.profile)

    def expect(self, traffic: Traffic, name: str, at: str, firing: dict[str, str] | None, minutes: int = 30) -> None:
        """Alert ``name`` at ``at``: firing with these labels (besides severity), or silent (None)."""
        expected = []
        if firing is not None:
            rule = self.alerts[name]
            labels = {**firing, **rule["labels"]}
            notes = {key: rules_module.expand(text, labels) for key, text in rule["annotations"].items()}
            expected.append({"exp_labels": labels, "exp_annotations": notes})
        self.tests.append(
            {
                "name": f"{name} {'fires' if firing is not None else 'is silent'} at {at}",
                "interval": "1m",
                "input_series": traffic.series,
                "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected}],
            }
        )

    def slow(self) -> float:
        return self.slo["ttft_seconds"] * 1.5

    def fast(self) -> float:
        return self.slo["ttft_seconds"] / 4

    def ttft_high(self) -> None:
        """The classic alert: the TTFT quantile above the threshold pages only above slo.min_request_rate."""
        at = "20m"
        for factor, fires in ((0.8, False), (1.2, True)):  # 40 and 60 requests/s with the default 50
            rate = self.slo["min_request_rate"] * factor
            slow = self.traffic().requests([Phase(30, rate, {self.slow(): 1.0})])
            self.expect(slow, "TokenlatTTFTHigh", at, MODEL if fires else None)
        busy_and_fast = self.traffic().requests([Phase(30, self.slo["min_request_rate"] * 1.2, {self.fast(): 1.0})])
        self.expect(busy_and_fast, "TokenlatTTFTHigh", at, None)

    def burn(self) -> None:
        """Multiwindow burn rates: a fast burn pages, a slow one opens a ticket and does not page, none is silent.
        A constant share over the threshold gives every window the same ratio (rate extrapolates over a window not
        yet full), so 90 minutes of traffic exercise the 6h and 3d windows too."""
        budget = 1 - self.slo["ttft_objective"]

        def share_over(burn_rate: float) -> Traffic:
            over = budget * burn_rate
            values = {self.slow(): over, self.fast(): 1 - over}
            return self.traffic().requests([Phase(100, 10, values)])

        fast, slow, within = share_over(20), share_over(3), share_over(0.5)
        self.expect(fast, "TokenlatTTFTBudgetBurn", "15m", MODEL)
        self.expect(slow, "TokenlatTTFTBudgetBurn", "90m", None)
        self.expect(slow, "TokenlatTTFTBudgetBurnSlow", "90m", MODEL)
        self.expect(within, "TokenlatTTFTBudgetBurnSlow", "90m", None)

    def tpot(self) -> None:
        busy = self.slo["min_request_rate"] * 1.2
        threshold = self.slo["tpot_seconds"]
        for value, fires in ((threshold * 2, True), (threshold / 2, False)):
            traffic = self.traffic().requests([Phase(30, busy, {value: 1.0})], ttft=False, tpot=True)
            self.expect(traffic, "TokenlatTPOTHigh", "20m", MODEL if fires else None)
        day = 24 * 60
        for later, fires in ((threshold * 0.8, True), (threshold * 0.5, False)):
            phases = [Phase(day, busy, {threshold * 0.5: 1.0}), Phase(60, busy, {later: 1.0})]
            traffic = self.traffic().requests(phases, ttft=False, tpot=True)
            self.expect(traffic, "TokenlatTPOTRegression", "24h55m", MODEL if fires else None)

    def errors(self) -> None:
        """Failures above slo.error_ratio page; client cancellations are not failures."""
        total = 10.0
        over = self.slo["error_ratio"] * 2
        for failed, cancelled, fires in ((over, 0.0, True), (self.slo["error_ratio"] / 5, over * 2, False)):
            ok = Phase(30, total * (1 - failed - cancelled), {1.0: 1.0})
            traffic = self.traffic().histogram(semconv.DURATION_SPEC, [ok])
            traffic.histogram(semconv.DURATION_SPEC, [Phase(30, total * failed, {1.0: 1.0})], error_type="TimeoutError")
            if cancelled:
                traffic.histogram(
                    semconv.DURATION_SPEC, [Phase(30, total * cancelled, {1.0: 1.0})], error_type="cancelled"
                )
            self.expect(traffic, "TokenlatErrorRatioHigh", "20m", MODEL if fires else None)

    def pipeline(self) -> None:
        accepted = self.traffic().plain("otelcol_receiver_accepted_metric_points", COLLECTOR, "0+600x40")
        self.expect(accepted, "TokenlatPipelineBroken", "20m", {})
        self.expect(accepted, "TokenlatMetricsAbsent", "20m", {})
        arriving = self.traffic().requests([Phase(40, 1, {self.fast(): 1.0})])
        arriving.plain("otelcol_receiver_accepted_metric_points", COLLECTOR, "0+600x40")
        self.expect(arriving, "TokenlatPipelineBroken", "20m", None)
        self.expect(arriving, "TokenlatMetricsAbsent", "20m", None)
        exporter = {**COLLECTOR, "exporter": "prometheus_remote_write"}
        for values, fires in (("0+50x40", True), ("0+0x40", False)):
            failing = self.traffic().plain("otelcol_exporter_send_failed_metric_points", exporter, values)
            self.expect(failing, "TokenlatCollectorExportFailures", "20m", exporter if fires else None)
        # The exporter records the WAL's lag every 15 s; a healthy WAL is at 0 with a short backlog now and then.
        for values, fires in (("3+0x40", True), ("0 0 2 0 0 1 0 0 0 4 0 0 0 0 0 0 0 2 0 0 0 0 0 0 0 0 0 0 0 0", False)):
            lagging = self.traffic().plain(rules_module.WAL_LAG, exporter, values)
            self.expect(lagging, "TokenlatCollectorWALLag", "25m", exporter if fires else None)

    def energy(self) -> None:
        """Joules per output token per pod and per model: DCGM watts over output tokens per second, joined on
        namespace and pod through target_info. Pod 0 serves two models (512 W over 768 + 256 tokens/s: 0.5 J/token,
        its watts shared 3:1), pod 1 one (256 W over 1024 tokens/s: 0.25). Powers of two keep the rates exact, which
        promtool 2.42 compares exactly."""
        traffic = self.traffic()
        pods = (("vllm-0", "0a1b", (320.0, 192.0)), ("vllm-1", "2c3d", (256.0,)))
        for pod, uid, gpus in pods:
            for gpu, watts in enumerate(gpus):
                dcgm = {"Hostname": "node-1", "gpu": str(gpu), "UUID": f"GPU-{uid}-{gpu}", "modelName": "NVIDIA H100"}
                traffic.plain(
                    rules_module.DCGM_POWER,
                    {**dcgm, "namespace": "llm", "pod": pod, "container": "vllm"},
                    f"{watts:g}+0x20",
                )
            resource = {"job": "llm/vllm", "instance": uid, "k8s_namespace_name": "llm", "k8s_pod_name": pod}
            traffic.plain("target_info", resource, "1+0x20")
        served = (("0a1b", "qwen3-32b", 768.0), ("0a1b", "llama-3-8b", 256.0), ("2c3d", "llama-3-8b", 1024.0))
        for uid, model, tokens_per_second in served:
            labels = {"job": "llm/vllm", "instance": uid, "gen_ai_provider_name": "vllm", "gen_ai_request_model": model}
            phases = [Phase(21, tokens_per_second, {1.0: 1.0})]  # one output token per "request": the sum is tokens
            name = semconv.prometheus_name(semconv.TOKEN_USAGE_SPEC)
            labels["gen_ai_token_type"] = "output"
            traffic.series += (
                native(name, phases, labels) if self.profile.native else classic(name, (1.0,), phases, labels)
            )
        expected = {
            "tokenlat:energy_per_output_token_joules:pod": [
                ({"namespace": "llm", "pod": "vllm-0"}, 0.5),
                ({"namespace": "llm", "pod": "vllm-1"}, 0.25),
            ],
            "tokenlat:energy_per_output_token_joules:model": [
                ({**MODEL, "gen_ai_request_model": "llama-3-8b"}, (128 + 256) / (256 + 1024)),
                (MODEL, 0.5),
            ],
        }
        self.tests.append(
            {
                "name": "energy per output token",
                "interval": "1m",
                "input_series": traffic.series,
                "promql_expr_test": [
                    {
                        "expr": expr,
                        "eval_time": "15m",
                        "exp_samples": [
                            {"labels": f"{expr}{{{_labels(labels)}}}", "value": value} for labels, value in samples
                        ],
                    }
                    for expr, samples in expected.items()
                ],
            }
        )

    def all(self) -> list[dict[str, Any]]:
        for scenario in (self.ttft_high, self.burn, self.tpot, self.errors, self.pipeline, self.energy):
            scenario()
        return self.tests


def write_tests(profile: Profile, directory: Path, tests: list[dict[str, Any]]) -> Path:
    (directory / "rules.yaml").write_text(rules_module.render(profile), encoding="utf-8")
    path = directory / "tests.yaml"
    document = {"rule_files": ["rules.yaml"], "evaluation_interval": "1m", "tests": tests}
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000), encoding="utf-8")
    return path


def assert_passes(promtool: Path, tests: Path) -> None:
    result = run(promtool, "test", "rules", tests)
    assert result.returncode == 0, (
        f"promtool test rules {tests} failed:\n{result.stdout[-6000:]}{result.stderr[-3000:]}"
    )


@pytest.mark.parametrize("name", builtin_names())
def test_promtool_checks_every_rendered_rules_file(
    name: str, tmp_path: Path, debian_promtool: Path, promtool3: Path
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(rules_module.render(load_profile(name)), encoding="utf-8")
    for promtool in (debian_promtool, promtool3):
        result = run(promtool, "check", "rules", path)
        assert result.returncode == 0 and "SUCCESS" in result.stdout, f"{promtool}: {result.stdout}{result.stderr}"


def test_alerts_of_a_classic_profile(tmp_path: Path, debian_promtool: Path, promtool3: Path) -> None:
    profile = load_profile("selfhosted")
    assert not profile.native
    tests = write_tests(profile, tmp_path, Scenarios(profile).all())
    for promtool in (debian_promtool, promtool3):
        assert_passes(promtool, tests)


def test_alerts_of_a_native_profile(tmp_path: Path, promtool3: Path) -> None:
    profile = load_profile("local")
    assert profile.native
    assert_passes(promtool3, write_tests(profile, tmp_path, Scenarios(profile).all()))


def test_a_wrong_expectation_fails(tmp_path: Path, promtool3: Path) -> None:
    """The harness can fail: expecting the classic alert at 40 requests/s (below slo.min_request_rate) must."""
    profile = load_profile("local")
    scenarios = Scenarios(profile)
    rate = profile.data["slo"]["min_request_rate"] * 0.8
    scenarios.expect(
        scenarios.traffic().requests([Phase(30, rate, {scenarios.slow(): 1.0})]), "TokenlatTTFTHigh", "20m", MODEL
    )
    result = run(promtool3, "test", "rules", write_tests(profile, tmp_path, scenarios.tests))
    assert result.returncode != 0 and "TokenlatTTFTHigh" in result.stdout + result.stderr
