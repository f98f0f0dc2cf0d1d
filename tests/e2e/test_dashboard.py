"""Every query of the Grafana dashboard (`tokenlat render --what dashboard`), asked of the Prometheus of a real verify
run, answers with data.

The run is verify's own (tokenlat_cli/verify/runner.py, ``running_pipeline``): Prometheus 3, the ocb-built Collector,
the synthetic model server and the load through the tokenlat instrumentation, once with native and once with classic
histograms. With everything still up, the test adds what the load does not make:

- failed requests, for the error-ratio panel: a second instrumented service sends a few through the same Collector;
- GPU power, for the energy panel: NVIDIA's dcgm-exporter is scraped by Prometheus, not sent through the Collector,
  so the test writes DCGM_FI_DEV_POWER_USAGE samples, with the labels dcgm-exporter gives them, straight into the
  remote-write receiver of verify's Prometheus (tests/remote_write.py).

Then it runs the variables' queries (``label_values`` as the PromQL ``count by``), sets each variable to the value of
the load the data holds, sets ``$__rate_interval`` to a fixed window, and asks every panel's query: each must return
at least one series with a finite value.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import math
import re
import time
from pathlib import Path
from typing import Any

import pytest

from tests.remote_write import remote_write, write_request
from tokenlat import semconv
from tokenlat_cli.operate import dashboard
from tokenlat_cli.profiles import Profile, load_profile
from tokenlat_cli.verify.polling import poll, wait_for_value
from tokenlat_cli.verify.prometheus import PROMETHEUS_ENV
from tokenlat_cli.verify.promql import PrometheusClient, Queries
from tokenlat_cli.verify.runner import LOAD_ATTRIBUTES, LoadedPipeline, Stages, VerifySettings, running_pipeline

#: $__rate_interval's stand-in: longer than the run, so that every rate sees all of its samples.
WINDOW = "5m"
FAILED_REQUESTS = 6
#: Two GPUs of one host, as dcgm-exporter labels them; watts.
GPUS = {"0": 310.0, "1": 290.0}
POWER_SAMPLES = 12  # one every 5 s over the last minute
#: How long one query may take to find the data: the last export of the load and the failed requests in flight.
ARRIVAL = 60.0
_LABEL_VALUES = re.compile(r"^label_values\((?P<series>.+), (?P<label>\w+)\)$")


def _profile(histograms: str) -> Profile:
    base = load_profile("local")
    data = copy.deepcopy(base.data)
    data["metrics"]["histograms"] = histograms
    return Profile(base.name, base.source, data)


def _fail_some_requests(pipeline: LoadedPipeline, native: bool) -> None:
    """Requests of the load's model that fail after their first token (error.type TimeoutError): one, and once
    Prometheus holds it the others, so that rate() sees them arrive (a series' first sample is no increase)."""
    telemetry = pipeline.telemetry("tokenlat-dashboard-test")
    errors = Queries(native).count(semconv.DURATION_SPEC, 'error_type="TimeoutError"')
    try:
        failed = 0
        for batch in (1, FAILED_REQUESTS - 1):
            for _ in range(batch):
                with contextlib.suppress(TimeoutError), telemetry.metrics.request(dict(LOAD_ATTRIBUTES)) as rec:
                    rec.tokens()
                    raise TimeoutError("the model server stopped answering")
            failed += batch
            arrived = wait_for_value(lambda: pipeline.backend.query.scalar(errors), failed, ARRIVAL)
            assert arrived == failed, f"{arrived} of {failed} failed requests in Prometheus"
    finally:
        telemetry.shutdown()


def _write_gpu_power(write_url: str) -> None:
    """dcgm-exporter's power gauge of two GPUs over the last minute, oldest first, in one remote write."""
    now_ms = int(time.time() * 1000)
    labels = {"Hostname": "gpu-node-0", "modelName": "NVIDIA H100 80GB HBM3", "job": "dcgm-exporter"}
    body = b"".join(
        write_request(dashboard.DCGM_POWER, {**labels, "gpu": gpu, "UUID": f"GPU-{gpu}"}, watts, now_ms - i * 5000)
        for i in reversed(range(POWER_SAMPLES))
        for gpu, watts in GPUS.items()
    )
    response = remote_write(write_url, body, {})
    assert response.status_code in (200, 204), response.text


def _finite(series: list[dict[str, Any]]) -> bool:
    return any(math.isfinite(float(s["value"][1])) for s in series)


def _escaped(value: str) -> str:
    """A label value as a regex inside a PromQL string, as Grafana writes a variable's value into =~."""
    return re.escape(value).replace("\\", "\\\\")


def _variables(client: PrometheusClient, data: dict[str, Any]) -> dict[str, str]:
    """Each query variable's values in the data (its label_values query as PromQL), each set to the load's value,
    in the dashboard's order: a later variable's query may use an earlier one."""
    chosen: dict[str, str] = {}
    for variable in data["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = _LABEL_VALUES.match(variable["query"])
        assert query is not None, variable["query"]
        series = _substituted(query["series"], chosen)
        load_value = LOAD_ATTRIBUTES[{k.replace(".", "_"): k for k in LOAD_ATTRIBUTES}[query["label"]]]
        read = functools.partial(_label_values, client, series, query["label"])
        found = poll(read, lambda found, wanted=load_value: wanted in found, ARRIVAL)
        assert load_value in found, (variable["name"], found)
        chosen[variable["name"]] = _escaped(load_value)
    assert set(chosen) == set(dashboard.VARIABLES)
    return chosen


def _label_values(client: PrometheusClient, series: str, label: str) -> set[str]:
    return {s["metric"].get(label, "") for s in client.query(f"count by ({label}) ({series})")}


def _substituted(expr: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        expr = expr.replace(f"${name}", value)
    return expr.replace(dashboard.RATE_INTERVAL, WINDOW)


@pytest.mark.parametrize("histograms", ["native", "classic"])
def test_every_panel_query_answers_from_a_verify_run(
    histograms: str,
    collector_binary: Path,
    prometheus3_binary: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(PROMETHEUS_ENV, str(prometheus3_binary))
    profile = _profile(histograms)
    data = json.loads(dashboard.render(profile))
    settings = VerifySettings(requests=120, concurrency=40)
    with running_pipeline(profile, settings, tmp_path, Stages(print, 5)) as pipeline:
        assert not pipeline.load.failures, pipeline.load.failures[:3]
        _fail_some_requests(pipeline, dashboard.native_queries(profile))
        _write_gpu_power(pipeline.backend.write_url)
        client = pipeline.backend.query
        values = _variables(client, data)
        answers: dict[str, list[dict[str, Any]]] = {}
        for _title, expr in dashboard.targets(data):
            query = _substituted(expr, values)
            assert "$" not in query, query
            answers[query] = poll(functools.partial(client.query, query), _finite, ARRIVAL)
        empty = [query for query, series in answers.items() if not _finite(series)]
        assert not empty, f"{len(empty)} of {len(answers)} queries without a finite value:\n" + "\n".join(empty)
    by_type = next(series for query, series in answers.items() if "by (error_type)" in query)
    assert {s["metric"]["error_type"] for s in by_type} == {"TimeoutError"}
    assert float(by_type[0]["value"][1]) > 0
