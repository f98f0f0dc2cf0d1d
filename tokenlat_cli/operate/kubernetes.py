"""The Kubernetes manifests that run a profile's Collector (`tokenlat render --what k8s`): one multi-document YAML.

Single tier: one Deployment. Two tiers (tiers.gateways set): a DaemonSet of agents (one per node, so services send
to their own node) and a StatefulSet of gateways. The gateways are a StatefulSet, not a Deployment, because the
agents' load_balancing exporters route (metrics by resource, traces by trace id) to a fixed list of host names
(tiers.gateways): only a StatefulSet behind a headless Service gives each gateway a stable name
(tokenlat-gateway-0.tokenlat-gateway.NS.svc), and render refuses a profile whose gateways are not exactly those
names, so the two cannot drift apart.

Secrets never appear here: every variable the rendered config reads (env_vars_referenced) comes from the Secret
deploy.secret_name, key by key, and certificate files from Secrets mounted where the profile names them. The
header says which Secrets to create; the unit tests validate every document against the Kubernetes API schemas.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath
from typing import Any

import yaml

from tokenlat_cli.operate import runtime
from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import RenderError, env_vars_referenced

CONFIG_DIR = "/etc/tokenlat/config"
CONFIG_MAP = "tokenlat-collector-config"
# The distroless image's "nonroot" user and group (collector/Dockerfile runs as it too).
NONROOT = 65532
# Secret files readable by the pod's group (fsGroup) only: 0440.
SECRET_MODE = 0o440


class _Dumper(yaml.SafeDumper):
    """Block style, and multi-line strings (the Collector configs) as literal blocks a reader can diff; no
    anchors and aliases (&id001), which hide a shared value from a reader and from tools that edit one copy."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _document(comment: list[str], body: dict[str, Any]) -> str:
    lines = "".join(f"# {line}\n" if line else "#\n" for line in comment)
    return "---\n" + lines + yaml.dump(body, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=1000)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def tls_secrets(profile: Profile) -> dict[str, tuple[str, list[str]]]:
    """Secret name -> (the directory it is mounted at, the file names in it), one Secret per directory of TLS files
    the profile names: the file names are the Secret's keys."""
    by_dir: dict[str, list[str]] = {}
    for path in runtime.tls_files(profile):
        p = PurePosixPath(path)
        by_dir.setdefault(str(p.parent), []).append(p.name)
    secrets: dict[str, tuple[str, list[str]]] = {}
    for directory, names in by_dir.items():
        if directory == CONFIG_DIR:
            raise RenderError(f"{profile.source}: TLS files under {CONFIG_DIR} would hide the Collector config there")
        base = f"{profile.data['deploy']['secret_name']}-{_slug(PurePosixPath(directory).name)}"
        name = base if base not in secrets else f"{base}-{len(secrets)}"
        secrets[name] = (directory, names)
    return secrets


def _check_gateways(profile: Profile, headless: str, grpc_port: int) -> None:
    """The agents' static list of gateways must name the StatefulSet's pods, one each, at the gateways' OTLP/gRPC
    port; otherwise traces go to names that do not resolve, or a gateway gets none."""
    deploy = profile.data["deploy"]
    expected = sorted(
        f"{headless}-{i}.{headless}.{deploy['namespace']}.svc:{grpc_port}" for i in range(deploy["gateway_replicas"])
    )
    given = sorted(g.replace(".svc.cluster.local:", ".svc:") for g in profile.data["tiers"]["gateways"])
    if given != expected:
        raise RenderError(
            f"{profile.source}: tiers.gateways must be the gateway StatefulSet's pods (deploy.gateway_replicas "
            f"{deploy['gateway_replicas']}, deploy.namespace {deploy['namespace']}): {', '.join(expected)}"
        )


def _resources(profile: Profile) -> dict[str, Any]:
    memory = runtime.memory(profile)
    deploy = profile.data["deploy"]
    return {
        "requests": {"cpu": deploy["cpu_request"], "memory": f"{memory.limit_mib}Mi"},
        "limits": {"cpu": deploy["cpu_limit"], "memory": f"{memory.hard_limit_mib}Mi"},
    }


def _writes_wal(profile: Profile, tier: runtime.Tier) -> bool:
    """The tier that remote-writes keeps the WAL (backend.wal): the single Collector, or the gateways."""
    return bool(profile.data["backend"]["wal"]["enabled"]) and tier.role != "agent"


def _wal_claim(profile: Profile) -> dict[str, Any]:
    storage = profile.data["deploy"]["wal_storage"]
    return {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": storage}}}


def _wal_volume(profile: Profile, tier: runtime.Tier) -> dict[str, Any] | None:
    """The WAL's volume in the pod: the single Deployment's claim. Each gateway gets a claim of its own from the
    StatefulSet's volumeClaimTemplates instead, so no volume is listed for it here."""
    if not _writes_wal(profile, tier) or tier.role == "gateway":
        return None
    return {"name": "wal", "persistentVolumeClaim": {"claimName": f"{tier.name}-wal"}}


def _volumes(profile: Profile, tier: runtime.Tier) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    volumes: list[dict[str, Any]] = [
        {
            "name": "config",
            "configMap": {"name": CONFIG_MAP, "items": [{"key": tier.config_file, "path": tier.config_file}]},
        }
    ]
    mounts: list[dict[str, Any]] = [{"name": "config", "mountPath": CONFIG_DIR, "readOnly": True}]
    for secret, (directory, names) in tls_secrets(profile).items():
        items = [{"key": name, "path": name} for name in names]
        volumes.append({"name": secret, "secret": {"secretName": secret, "items": items, "defaultMode": SECRET_MODE}})
        mounts.append({"name": secret, "mountPath": directory, "readOnly": True})
    wal = _wal_volume(profile, tier)
    if wal:
        volumes.append(wal)
    if _writes_wal(profile, tier):
        mounts.append({"name": "wal", "mountPath": profile.data["backend"]["wal"]["directory"]})
    return volumes, mounts


def _container(profile: Profile, tier: runtime.Tier, config: str) -> dict[str, Any]:
    secret = profile.data["deploy"]["secret_name"]
    env: list[dict[str, Any]] = [{"name": "GOMEMLIMIT", "value": runtime.memory(profile).gomemlimit}]
    env += [
        {"name": var, "valueFrom": {"secretKeyRef": {"name": secret, "key": var}}}
        for var in env_vars_referenced(config)
    ]
    probe = {"httpGet": {"path": "/", "port": "health"}, "periodSeconds": 10, "failureThreshold": 3}
    _, mounts = _volumes(profile, tier)
    return {
        "name": "otelcol",
        "image": profile.data["deploy"]["image"],
        "imagePullPolicy": "IfNotPresent",
        "args": [f"--config={CONFIG_DIR}/{tier.config_file}"],
        "env": env,
        "ports": [{"name": p.name, "containerPort": p.port, "protocol": "TCP"} for p in runtime.ports(profile)],
        "livenessProbe": {**probe, "initialDelaySeconds": 10},
        "readinessProbe": {**probe, "periodSeconds": 5},
        "resources": _resources(profile),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }


def _pod_template(profile: Profile, tier: runtime.Tier, config: str) -> dict[str, Any]:
    volumes, _ = _volumes(profile, tier)
    return {
        "metadata": {
            "labels": {"app.kubernetes.io/name": tier.name, "app.kubernetes.io/part-of": "tokenlat"},
            # A changed config changes the pod template, so applying it rolls the pods (the Collector does not
            # reload its config).
            "annotations": {"tokenlat.dev/config-sha256": hashlib.sha256(config.encode()).hexdigest()},
        },
        "spec": {
            "automountServiceAccountToken": False,  # the Collector never calls the Kubernetes API
            "terminationGracePeriodSeconds": 30,
            "securityContext": {
                "runAsNonRoot": True,
                "runAsUser": NONROOT,
                "runAsGroup": NONROOT,
                "fsGroup": NONROOT,
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "containers": [_container(profile, tier, config)],
            "volumes": volumes,
        },
    }


def _meta(profile: Profile, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": profile.data["deploy"]["namespace"],
        "labels": {"app.kubernetes.io/name": name, "app.kubernetes.io/part-of": "tokenlat"},
    }


def _workload(profile: Profile, tier: runtime.Tier, config: str) -> tuple[list[str], dict[str, Any]]:
    selector = {"matchLabels": {"app.kubernetes.io/name": tier.name}}
    spec: dict[str, Any] = {"selector": selector, "template": _pod_template(profile, tier, config)}
    if tier.role == "agent":
        comment = ["Agents: one per node; services send OTLP to the agent on their own node (Service below)."]
        return comment, {
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": _meta(profile, tier.name),
            **{"spec": spec},
        }
    if tier.role == "gateway":
        replicas = profile.data["deploy"]["gateway_replicas"]
        comment = [
            f"Gateways: {replicas} (deploy.gateway_replicas): they guard and remote-write the agents' metrics and",
            "tail-sample their traces.",
            "A StatefulSet: each gateway needs the stable name the agents' tiers.gateways list holds.",
        ]
        spec = {"serviceName": tier.name, "replicas": replicas, "podManagementPolicy": "Parallel", **spec}
        if _writes_wal(profile, tier):
            storage = profile.data["deploy"]["wal_storage"]
            comment.append(f"Each gateway's WAL (backend.wal) on a claim of its own, {storage} (deploy.wal_storage).")
            spec["volumeClaimTemplates"] = [{"metadata": {"name": "wal"}, "spec": _wal_claim(profile)}]
        return comment, {
            "apiVersion": "apps/v1",
            "kind": "StatefulSet",
            "metadata": _meta(profile, tier.name),
            "spec": spec,
        }
    comment = [
        "One Collector. One replica: tail sampling needs every span of a trace in one process, and one writer per",
        "series keeps remote write in order. Scale up with the two-tier layout (tiers.gateways) instead.",
    ]
    spec = {"replicas": 1, **spec}
    if _wal_volume(profile, tier):
        spec["strategy"] = {"type": "Recreate"}  # the WAL's claim is ReadWriteOnce: the old pod must let go first
    return comment, {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": _meta(profile, tier.name), "spec": spec}


def _service(profile: Profile, tier: runtime.Tier) -> tuple[list[str], dict[str, Any]]:
    otlp = [p for p in runtime.ports(profile) if p.name.startswith("otlp-")]
    spec: dict[str, Any] = {
        "selector": {"app.kubernetes.io/name": tier.name},
        "ports": [{"name": p.name, "port": p.port, "targetPort": p.name, "protocol": "TCP"} for p in otlp],
    }
    host = f"{tier.name}.{profile.data['deploy']['namespace']}.svc"
    if tier.role == "gateway":
        comment = ["Headless: gives each gateway pod its DNS name (tokenlat-gateway-N.tokenlat-gateway.NS.svc)."]
        spec["clusterIP"] = "None"
    elif tier.role == "agent":
        comment = [
            f"Services send OTLP to {host}:{runtime.port(profile, 'otlp-grpc').port} (gRPC) or",
            f":{runtime.port(profile, 'otlp-http').port} (HTTP); internalTrafficPolicy Local keeps it on the node.",
        ]
        spec["internalTrafficPolicy"] = "Local"
    else:
        comment = [
            f"Services send OTLP to {host}:{runtime.port(profile, 'otlp-grpc').port} (gRPC) or "
            f":{runtime.port(profile, 'otlp-http').port} (HTTP)."
        ]
    return comment, {"apiVersion": "v1", "kind": "Service", "metadata": _meta(profile, tier.name), "spec": spec}


def _header(profile: Profile, tiers: list[runtime.Tier], configs: dict[str, str]) -> list[str]:
    deploy = profile.data["deploy"]
    ns, secret = deploy["namespace"], deploy["secret_name"]
    variables = sorted({v for text in configs.values() for v in env_vars_referenced(text)})
    lines = [
        f"tokenlat Collector on Kubernetes, rendered by `tokenlat render --profile {profile.name} --what k8s`.",
        "Do not edit by hand: change the profile and render again. Apply in order (docs/deploy.md):",
        f"  1. this file's Namespace ({ns}), then the Secrets below, created by you (never rendered here):",
    ]
    if variables:
        literals = " ".join(f"--from-literal={v}=..." for v in variables)
        lines.append(f"     kubectl -n {ns} create secret generic {secret} {literals}")
    for name, (directory, names) in tls_secrets(profile).items():
        files = " ".join(f"--from-file={n}=..." for n in names)
        lines.append(f"     kubectl -n {ns} create secret generic {name} {files}   # mounted at {directory}")
    if not variables and not tls_secrets(profile):
        lines.append("     (none: this profile reads no variable and no certificate)")
    lines += [
        "  2. kubectl apply -f k8s.yaml (ConfigMap, " + ", ".join(t.name for t in tiers) + ", Services)",
        "  3. point the services' OTEL_EXPORTER_OTLP_ENDPOINT at the Service named in its comment below.",
        *runtime.memory(profile).explanation(),
    ]
    loopback = runtime.loopback_ports(profile)
    if loopback:
        bound = ", ".join(f"{p.name} {p.host}:{p.port}" for p in loopback)
        lines += [
            f"WARNING: this profile binds {bound} to loopback: probes and Services cannot reach them in a pod.",
            "Set receiver.*_endpoint and service.health_endpoint to 0.0.0.0:PORT in a profile that extends it.",
        ]
    return lines


def render(profile: Profile) -> str:
    tiers = runtime.tiers(profile)
    configs = {t.config_file: t.config(profile) for t in tiers}
    if runtime.two_tier(profile):
        _check_gateways(profile, "tokenlat-gateway", runtime.port(profile, "otlp-grpc").port)
    deploy = profile.data["deploy"]
    documents = [
        (
            _header(profile, tiers, configs),
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": deploy["namespace"], "labels": {"app.kubernetes.io/part-of": "tokenlat"}},
            },
        ),
        (
            ["The rendered Collector config" + ("s (agent and gateway)." if len(tiers) > 1 else ".")],
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(profile, CONFIG_MAP), "data": configs},
        ),
    ]
    for tier in tiers:
        documents += [_workload(profile, tier, configs[tier.config_file]), _service(profile, tier)]
        if _wal_volume(profile, tier):
            documents.append(
                (
                    [f"The write-ahead log's volume (backend.wal), {deploy['wal_storage']} (deploy.wal_storage)."],
                    {
                        "apiVersion": "v1",
                        "kind": "PersistentVolumeClaim",
                        "metadata": _meta(profile, f"{tier.name}-wal"),
                        "spec": _wal_claim(profile),
                    },
                )
            )
    return "".join(_document(comment, body) for comment, body in documents)
