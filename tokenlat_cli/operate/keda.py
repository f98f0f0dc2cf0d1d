"""`tokenlat render --what keda`: a KEDA ScaledObject that scales the model server on the profile's TTFT quantile
(or its queue), with KEDA's prometheus scaler asking the backend's query API, and the TriggerAuthentication that
hands it the query credentials from a Kubernetes Secret.

KEDA is the first choice (docs/autoscaling.md): it needs no metrics API server of its own, talks to each backend
with its own auth, and can scale to zero. The manifests are checked against KEDA's CRDs in the unit tests
(tokenlat_cli/operate/schemas.py).
"""

from __future__ import annotations

from typing import Any

from tokenlat_cli.operate import autoscaling
from tokenlat_cli.operate.schemas import KEDA_VERSION
from tokenlat_cli.profiles import Profile

API_VERSION = "keda.sh/v1alpha1"


def _name(profile: Profile) -> str:
    return f"{profile.data['autoscaling']['target']}-tokenlat"


def trigger_metadata(profile: Profile) -> dict[str, str]:
    """The prometheus scaler's metadata (every value a string, as the CRD wants)."""
    t = autoscaling.trigger(profile)
    metadata = {
        "serverAddress": autoscaling.query_url(profile),
        "query": t.query,
        "threshold": f"{t.threshold:g}",
    }
    mode = autoscaling.auth_mode(profile)
    if mode is not None:
        metadata["authModes"] = mode
    tenant = profile.data["backend"]["tenant"]
    if tenant:
        # Thanos Query with --query.enable-tenancy reads the tenant from the same header Receive does.
        metadata["customHeaders"] = f"THANOS-TENANT={tenant}"
    return metadata


def manifests(profile: Profile) -> list[dict[str, Any]]:
    autoscaling.check_replicas(profile)
    scaling = profile.data["autoscaling"]
    t = autoscaling.trigger(profile)
    trigger: dict[str, Any] = {
        "type": "prometheus",
        "name": t.name,
        "metricType": t.metric_type,
        "metadata": trigger_metadata(profile),
    }
    documents: list[dict[str, Any]] = []
    keys = autoscaling.secret_keys(profile)
    if keys:
        trigger["authenticationRef"] = {"name": f"{_name(profile)}-query"}
        documents.append(
            {
                "apiVersion": API_VERSION,
                "kind": "TriggerAuthentication",
                "metadata": {"name": f"{_name(profile)}-query", "namespace": scaling["namespace"]},
                "spec": {
                    "secretTargetRef": [{"parameter": key, "name": scaling["secret_name"], "key": key} for key in keys]
                },
            }
        )
    documents.append(
        {
            "apiVersion": API_VERSION,
            "kind": "ScaledObject",
            "metadata": {"name": _name(profile), "namespace": scaling["namespace"]},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": scaling["target"]},
                "minReplicaCount": scaling["min_replicas"],
                "maxReplicaCount": scaling["max_replicas"],
                "pollingInterval": 15,
                "cooldownPeriod": 300,
                "triggers": [trigger],
            },
        }
    )
    return documents


def render(profile: Profile) -> str:
    documents = manifests(profile)
    lines = [
        f"Needs KEDA (checked against the CRDs of {KEDA_VERSION}). Apply: kubectl apply -f keda.yaml",
        *autoscaling.secret_lines(profile),
        "Check: kubectl get scaledobject,hpa -n " + profile.data["autoscaling"]["namespace"] + " (docs/autoscaling.md)",
    ]
    return autoscaling.header(profile, "KEDA autoscaling of the model server", lines) + autoscaling.dump(documents)
