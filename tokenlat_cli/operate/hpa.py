"""`tokenlat render --what hpa`: autoscaling without KEDA, for clusters that run prometheus-adapter: its rule (the
external metric, in the ConfigMap the adapter reads with --config) and a HorizontalPodAutoscaler (autoscaling/v2)
on that External metric.

The question asked is autoscaling.trigger's, the same as KEDA's. The adapter connects to one Prometheus API for
all its rules, with the flags printed in the header; its credentials come from the same Secret as KEDA's.
"""

from __future__ import annotations

from typing import Any

from tokenlat_cli.operate import autoscaling
from tokenlat_cli.operate.schemas import ADAPTER_VERSION
from tokenlat_cli.profiles import Profile

CONFIG_KEY = "config.yaml"


def external_metric(profile: Profile) -> str:
    """The name the adapter serves the signal under (external.metrics.k8s.io) and the HPA asks for."""
    return "tokenlat_" + autoscaling.trigger(profile).name.replace("-", "_")


def adapter_config(profile: Profile) -> dict[str, Any]:
    """prometheus-adapter's config: one external rule whose query is the trigger's, verbatim (no template
    variables: the HPA's namespace is not added, the matchers already select the model server)."""
    t = autoscaling.trigger(profile)
    series_name = t.series.split("{", 1)[0]
    return {
        "externalRules": [
            {
                "seriesQuery": t.series,
                "name": {"matches": f"^{series_name}$", "as": external_metric(profile)},
                "resources": {"namespaced": False},
                "metricsQuery": t.query,
            }
        ]
    }


def _quantity(value: float) -> str:
    """A Kubernetes quantity in thousandths (1.6 -> 1600m): exact for the thresholds a profile can hold."""
    return f"{round(value * 1000)}m"


def _adapter_flags(profile: Profile) -> list[str]:
    url = autoscaling.query_url(profile)
    secret = profile.data["autoscaling"]["secret_name"]
    flags = [f"--prometheus-url={url}", f"--config=/etc/adapter/{CONFIG_KEY} (this ConfigMap)"]
    mode = autoscaling.auth_mode(profile)
    if mode == "bearer":
        flags.append(f"--prometheus-token-file=/etc/tokenlat-query/bearerToken (Secret {secret} mounted there)")
    elif mode == "basic":
        flags.append(
            "--prometheus-auth-config=/etc/tokenlat-query/kubeconfig (a kubeconfig whose user has the username "
            f"and password, in a Secret like {secret}; the adapter takes basic auth only this way)"
        )
    tenant = profile.data["backend"]["tenant"]
    if tenant:
        flags.append(f"--prometheus-header=THANOS-TENANT={tenant}")
    return flags


def manifests(profile: Profile) -> list[dict[str, Any]]:
    autoscaling.check_replicas(profile)
    scaling = profile.data["autoscaling"]
    if scaling["min_replicas"] < 1:
        raise autoscaling.refusal(
            profile.source,
            "autoscaling.min_replicas",
            "0 needs KEDA (render --what keda): a HorizontalPodAutoscaler keeps at least 1 replica",
        )
    t = autoscaling.trigger(profile)
    target_key = "value" if t.metric_type == "Value" else "averageValue"
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "tokenlat-adapter-config", "namespace": scaling["adapter_namespace"]},
            "data": {CONFIG_KEY: autoscaling.dump([adapter_config(profile)])},
        },
        {
            "apiVersion": "autoscaling/v2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": f"{scaling['target']}-tokenlat", "namespace": scaling["namespace"]},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": scaling["target"]},
                "minReplicas": scaling["min_replicas"],
                "maxReplicas": scaling["max_replicas"],
                "metrics": [
                    {
                        "type": "External",
                        "external": {
                            "metric": {"name": external_metric(profile)},
                            "target": {"type": t.metric_type, target_key: _quantity(t.threshold)},
                        },
                    }
                ],
            },
        },
    ]


def render(profile: Profile) -> str:
    documents = manifests(profile)
    lines = [
        f"For clusters without KEDA: prometheus-adapter ({ADAPTER_VERSION}'s config format) serves the signal as the",
        f"external metric {external_metric(profile)}; run it with",
        *(f"  {flag}" for flag in _adapter_flags(profile)),
        *autoscaling.secret_lines(profile),
        "Check: kubectl get --raw /apis/external.metrics.k8s.io/v1beta1/namespaces/"
        f"{profile.data['autoscaling']['namespace']}/{external_metric(profile)} (docs/autoscaling.md)",
    ]
    return autoscaling.header(profile, "prometheus-adapter autoscaling of the model server", lines) + autoscaling.dump(
        documents
    )
