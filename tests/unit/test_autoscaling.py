"""The autoscaling renders (`render --what keda`, `hpa`): every sample is checked against the schemas a cluster would
check it with (KEDA's CRDs, Kubernetes' API, prometheus-adapter's config), and the profile decides the query, the
threshold, the query URL and the credentials' Secret."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import REPO
from tokenlat_cli.main import cli
from tokenlat_cli.operate import autoscaling, hpa, keda
from tokenlat_cli.operate.schemas import (
    CRDS,
    KEDA_VERSION,
    ManifestError,
    adapter_config_problems,
    check_manifests,
    crd_sha256,
    problems,
)
from tokenlat_cli.profiles import Profile, builtin_names, load_profile
from tokenlat_cli.render import RenderError

DEPLOY = REPO / "deploy"


def _profile(tmp_path: Path, text: str) -> Profile:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return load_profile(str(path))


def _by_kind(text: str) -> dict[str, dict[str, Any]]:
    return {d["kind"]: d for d in check_manifests(text)}


def _variants(tmp_path: Path) -> list[Profile]:
    """Built-in profiles and the choices they do not make: bearer auth, queue metrics, scale to zero, NHCB."""
    texts = [
        "backend:\n  kind: tencent\n  endpoint: http://10.0.0.8:9090/api/v1/prom/write\n  auth:\n    kind: bearer\n"
        "    token_env: TMP_TOKEN\nautoscaling:\n  query_url: http://10.0.0.8:9090\n",
        "extends: local\nautoscaling:\n  metric: vllm_queue\n  min_replicas: 0\n",
        "extends: selfhosted\nautoscaling:\n  metric: sglang_queue\n  matchers: 'app=\"sglang\"'\n",
        "extends: selfhosted\nmetrics:\n  native_custom_buckets: true\n",
    ]
    variants = []
    for i, text in enumerate(texts):
        (tmp_path / str(i)).mkdir()
        variants.append(_profile(tmp_path / str(i), text))
    return [*(load_profile(name) for name in builtin_names()), *variants]


def test_every_sample_passes_the_crd_and_api_schemas(tmp_path: Path) -> None:
    checked = 0
    for profile in _variants(tmp_path):
        kinds = _by_kind(keda.render(profile))
        assert set(kinds) <= {"ScaledObject", "TriggerAuthentication"} and "ScaledObject" in kinds
        if profile.data["autoscaling"]["min_replicas"] >= 1:
            adapter, hpa_object = check_manifests(hpa.render(profile))
            assert hpa_object["kind"] == "HorizontalPodAutoscaler"
            assert adapter_config_problems(adapter["data"][hpa.CONFIG_KEY]) == []
        checked += 1
    assert checked == len(builtin_names()) + 4


def test_the_committed_samples_pass_the_schemas() -> None:
    for name in builtin_names():
        check_manifests((DEPLOY / name / "keda.yaml").read_text(encoding="utf-8"), f"deploy/{name}/keda.yaml")
        adapter, _ = check_manifests((DEPLOY / name / "hpa.yaml").read_text(encoding="utf-8"))
        assert adapter_config_problems(adapter["data"][hpa.CONFIG_KEY]) == []


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"spec": {"scaleTargetRef": {"name": "m"}, "triggers": [], "minReplicas": 1}}, "'minReplicas' was unexpected"),
        ({"spec": {"scaleTargetRef": {"name": "m"}, "triggers": [{"type": "x", "metadata": {"threshold": 2}}]}},
         "spec.triggers.0.metadata.threshold: 2 is not of type 'string'"),
        ({"spec": {"triggers": []}}, "'scaleTargetRef' is a required property"),
        ({"metadata": {"name": "x", "labels": {"a": 1}}, "spec": {"scaleTargetRef": {"name": "m"}, "triggers": []}},
         "metadata.labels.a: 1 is not of type 'string'"),
    ],
)  # fmt: skip
def test_the_keda_schema_refuses_what_a_cluster_would(document: dict[str, Any], expected: str) -> None:
    """The checks can fail: each of these ScaledObjects is wrong in one way, and that way is reported."""
    scaled = {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": "x"}, **document}
    assert any(expected in line for line in problems(scaled)), problems(scaled)


def test_the_kubernetes_and_adapter_schemas_refuse_mistakes() -> None:
    good = yaml.safe_load(hpa.render(load_profile("local")).split("---\n")[1])
    assert problems(good) == []
    bad = {**good, "spec": {**good["spec"], "maxReplicas": "8"}}
    assert problems(bad) == ["spec.maxReplicas: '8' is not of type 'integer'"]
    assert problems({"apiVersion": "example.com/v1", "kind": "Thing"})[0].startswith("example.com/v1 Thing: no schema")
    assert adapter_config_problems("externalRules:\n- seriesQuery: x\n  metricQuery: y\n") == [
        "externalRules.0: Additional properties are not allowed ('metricQuery' was unexpected)"
    ]
    with pytest.raises(ManifestError, match=r"hpa\.yaml: HorizontalPodAutoscaler/x: spec\.maxReplicas"):
        check_manifests(yaml.safe_dump({**bad, "metadata": {"name": "x"}}), "hpa.yaml")


def test_the_vendored_crds_are_the_pinned_ones() -> None:
    """Editing a vendored CRD (instead of re-vendoring a pinned release) fails here; tests/e2e/test_keda_crds.py
    compares them with the module the Go module proxy serves for KEDA_VERSION."""
    for crd in CRDS.values():
        assert crd_sha256(crd) == crd.sha256, f"{crd.filename} is not the file of KEDA {KEDA_VERSION}"


def test_ttft_trigger_follows_the_slo_and_the_histograms(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "extends: tencent\nslo:\n  ttft_seconds: 3\n  ttft_quantile: 0.9\n")
    t = autoscaling.trigger(profile)
    assert t.threshold == pytest.approx(2.4) and t.metric_type == "Value"
    assert t.expression == (
        'histogram_quantile(0.9, sum by (le) (rate(gen_ai_server_time_to_first_token_seconds_bucket{job="model-server"}'
        "[2m])))"
    )
    assert t.query == f"({t.expression} >= 0) or vector(0)"
    scaled = _by_kind(keda.render(profile))["ScaledObject"]
    assert scaled["spec"]["triggers"][0]["metadata"]["threshold"] == "2.4"
    assert _by_kind(hpa.render(profile))["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["external"]["target"] == {
        "type": "Value",
        "value": "2400m",
    }
    native = autoscaling.trigger(load_profile("local"))
    assert native.expression.startswith("histogram_quantile(0.95, sum(rate(gen_ai_server_time_to_first_token_seconds{")


def test_queue_trigger_scales_per_replica(tmp_path: Path) -> None:
    profile = _profile(tmp_path, "extends: local\nautoscaling:\n  metric: vllm_queue\n  queue_per_replica: 6\n")
    t = autoscaling.trigger(profile)
    assert t.expression == 'sum(vllm:num_requests_waiting{namespace="default"})'
    assert (t.metric_type, t.threshold) == ("AverageValue", 6.0)
    target = _by_kind(hpa.render(profile))["HorizontalPodAutoscaler"]["spec"]["metrics"][0]["external"]["target"]
    assert target == {"type": "AverageValue", "averageValue": "6000m"}


def test_secrets_come_from_a_secret_never_inline(tmp_path: Path) -> None:
    basic = _by_kind(keda.render(load_profile("aliyun")))
    ref = basic["TriggerAuthentication"]["spec"]
    assert ref == {
        "secretTargetRef": [
            {"parameter": "username", "name": "tokenlat-query", "key": "username"},
            {"parameter": "password", "name": "tokenlat-query", "key": "password"},
        ]
    }
    trigger = basic["ScaledObject"]["spec"]["triggers"][0]
    assert trigger["metadata"]["authModes"] == "basic"
    assert trigger["authenticationRef"] == {"name": basic["TriggerAuthentication"]["metadata"]["name"]}
    bearer = _by_kind(keda.render(_variants(tmp_path)[len(builtin_names())]))
    assert bearer["TriggerAuthentication"]["spec"]["secretTargetRef"][0]["parameter"] == "bearerToken"
    assert bearer["ScaledObject"]["spec"]["triggers"][0]["metadata"]["authModes"] == "bearer"
    unauthenticated = _by_kind(keda.render(load_profile("local")))
    assert set(unauthenticated) == {"ScaledObject"}
    assert "authenticationRef" not in unauthenticated["ScaledObject"]["spec"]["triggers"][0]


def test_query_url_is_derived_where_the_backend_allows(tmp_path: Path) -> None:
    assert autoscaling.query_url(load_profile("local")) == "http://127.0.0.1:9090"
    assert autoscaling.query_url(load_profile("selfhosted")) == "http://victoria-metrics.monitoring.svc:8428"
    assert autoscaling.query_url(load_profile("thanos")) == "https://thanos-query.monitoring.svc:10902"
    given = _profile(tmp_path, "extends: local\nautoscaling:\n  query_url: http://prom.example:9090/\n")
    assert autoscaling.query_url(given) == "http://prom.example:9090"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("extends: aliyun\nautoscaling:\n  query_url: ''\n", "is required for backend.kind aliyun: ARMS"),
        ("extends: tencent\nautoscaling:\n  query_url: ''\n", "is required for backend.kind tencent: TMP"),
        ("extends: thanos\nbackend:\n  endpoint: https://receive.example:19291/api/v1/receive\n",
         "Thanos Receive (receive.example) serves no query API"),
        ("extends: local\nautoscaling:\n  query_url: prom:9090\n", "must be an http(s) URL"),
    ],
)  # fmt: skip
def test_query_url_is_refused_where_it_cannot_be_derived(tmp_path: Path, text: str, reason: str) -> None:
    profile = _profile(tmp_path, text)
    for render in (keda.render, hpa.render):
        with pytest.raises(RenderError) as caught:
            render(profile)
        assert str(caught.value).startswith(f"{tmp_path / 'p.yaml'}: autoscaling.query_url: ")
        assert reason in str(caught.value)


def test_replica_bounds_are_checked(tmp_path: Path) -> None:
    inverted = _profile(tmp_path, "extends: local\nautoscaling:\n  min_replicas: 5\n  max_replicas: 2\n")
    for render in (keda.render, hpa.render):
        with pytest.raises(RenderError, match=r"autoscaling\.min_replicas: must not be above"):
            render(inverted)
    (tmp_path / "zero").mkdir()
    zero = _profile(tmp_path / "zero", "extends: local\nautoscaling:\n  min_replicas: 0\n")
    assert _by_kind(keda.render(zero))["ScaledObject"]["spec"]["minReplicaCount"] == 0
    with pytest.raises(RenderError, match="0 needs KEDA"):
        hpa.render(zero)


def test_the_adapter_rule_serves_the_same_query() -> None:
    profile = load_profile("thanos")
    (rule,) = hpa.adapter_config(profile)["externalRules"]
    t = autoscaling.trigger(profile)
    assert rule["metricsQuery"] == t.query == keda.trigger_metadata(profile)["query"]
    assert rule["seriesQuery"] == t.series and rule["resources"] == {"namespaced": False}
    assert rule["name"]["as"] == hpa.external_metric(profile) == "tokenlat_ttft_p95"


def test_render_refuses_with_the_file_field_and_reason(tmp_path: Path, runner: CliRunner) -> None:
    path = tmp_path / "p.yaml"
    path.write_text("extends: tencent\nautoscaling:\n  query_url: ''\n", encoding="utf-8")
    result = runner.invoke(cli, ["render", "--profile", str(path), "--what", "keda"])
    assert result.exit_code == 2
    assert f"{path}: autoscaling.query_url: is required for backend.kind tencent" in result.output
