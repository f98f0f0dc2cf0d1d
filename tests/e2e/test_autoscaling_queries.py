"""Each autoscaling trigger's query, as rendered for every built-in profile (`render --what keda` and `hpa`), asked
of a real Prometheus holding verify's data: it must parse, return the one element KEDA and prometheus-adapter
accept, and be the TTFT quantile the load produced, finite and close to the truth."""

from __future__ import annotations

import copy
import math
import statistics
from pathlib import Path

import pytest
import yaml

from tokenlat import semconv
from tokenlat_cli.operate import hpa, keda
from tokenlat_cli.operate.autoscaling import QUEUE_METRICS, trigger
from tokenlat_cli.operate.schemas import check_manifests
from tokenlat_cli.profiles import Profile, builtin_names, load_profile
from tokenlat_cli.verify.load import truth_series
from tokenlat_cli.verify.polling import wait_for_value
from tokenlat_cli.verify.promql import PrometheusClient, Queries
from tokenlat_cli.verify.runner import Stages, VerifySettings, running_pipeline

#: The service.name verify's load records under: the job label the queries select.
VERIFY_JOB = 'job="tokenlat-verify"'


def _pointed_at_verify(profile: Profile, metric: str = "ttft") -> Profile:
    data = copy.deepcopy(profile.data)
    data["autoscaling"].update(matchers=VERIFY_JOB, metric=metric)
    return Profile(profile.name, profile.source, data)


def _rendered_queries(profile: Profile) -> list[str]:
    """The query exactly as KEDA's trigger and the adapter's rule carry it in the rendered, schema-checked YAML."""
    scaled = next(d for d in check_manifests(keda.render(profile)) if d["kind"] == "ScaledObject")
    adapter = check_manifests(hpa.render(profile))[0]
    rule = yaml.safe_load(adapter["data"][hpa.CONFIG_KEY])["externalRules"][0]
    return [scaled["spec"]["triggers"][0]["metadata"]["query"], rule["metricsQuery"]]


def _one_value(client: PrometheusClient, query: str) -> float:
    result = client.query(query)
    assert len(result) == 1, f"{query} returned {len(result)} elements; KEDA needs exactly one"
    return float(result[0]["value"][1])


@pytest.mark.parametrize("histogram", ["exponential", "explicit"])
def test_trigger_queries_answer_from_verify_data(
    tmp_path: Path, collector_binary: Path, prometheus_binary: Path, histogram: str
) -> None:
    native = histogram == "exponential"
    profiles = [p for p in map(load_profile, builtin_names()) if p.native == native]
    assert profiles, f"no built-in profile records {histogram} histograms"
    settings = VerifySettings(requests=120, concurrency=40, histogram=histogram)
    with running_pipeline(load_profile("local"), settings, tmp_path, Stages(print, 5)) as run:
        client = run.backend.query
        sent = len(run.load.truths)
        arrived = wait_for_value(lambda: client.scalar(Queries(native).count(semconv.DURATION_SPEC)), sent, 60.0)
        assert arrived == sent
        ttft = sorted(truth_series(run.load.truths)[semconv.TIME_TO_FIRST_TOKEN])
        for profile in profiles:
            local = _pointed_at_verify(profile)
            t = trigger(local)
            rank = round(profile.data["slo"]["ttft_quantile"] * 1000) - 1
            truth = statistics.quantiles(ttft, n=1000, method="inclusive")[rank]
            signal = _one_value(client, t.expression)
            assert math.isfinite(signal) and ttft[0] <= signal <= ttft[-1], f"{profile.name}: {t.expression} = {signal}"
            # rate() misses the requests finished before a series' first sample: close to the truth, not exact.
            assert signal == pytest.approx(truth, rel=0.2), f"{profile.name}: {signal} vs the true {truth}"
            for query in _rendered_queries(local):
                assert _one_value(client, query) == pytest.approx(signal), f"{profile.name}: {query}"
        # The queue metrics come from vLLM or SGLang, which verify does not run: their queries must parse and answer
        # the one element 0 that means "no queue" (docs/autoscaling.md says what is not exercised).
        for metric in QUEUE_METRICS:
            for query in _rendered_queries(_pointed_at_verify(load_profile("local"), metric)):
                assert _one_value(client, query) == 0.0, query
