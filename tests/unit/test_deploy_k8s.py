"""`render --what k8s`: every rendered sample is valid against the Kubernetes API schemas (tokenlat_cli/operate/
schemas.py), and says what the Collector needs: every variable its config reads from the Secret, every TLS file
mounted where the config names it, probes on health_check, memory sized from memory_limiter."""

from __future__ import annotations

import copy
import functools
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import DATA
from tokenlat_cli.main import cli
from tokenlat_cli.operate import kubernetes, runtime, schemas
from tokenlat_cli.profiles import builtin_names, load_profile
from tokenlat_cli.render import RenderError, env_vars_referenced, render_collector_config

PROFILES = [*builtin_names(), *sorted(str(p) for p in DATA.glob("*.yaml"))]
WORKLOADS = ("Deployment", "DaemonSet", "StatefulSet")


@functools.cache
def _checked(name: str) -> list[dict[str, Any]]:
    """Rendered and schema-checked once per profile: the check is the slow part, and the tests only read it."""
    return schemas.check_manifests(kubernetes.render(load_profile(name)), name)


def _docs(name: str) -> list[dict[str, Any]]:
    return copy.deepcopy(_checked(name))


def _by_kind(docs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _role(workload: dict[str, Any]) -> str:
    return {"tokenlat-agent": "agent", "tokenlat-gateway": "gateway"}.get(workload["metadata"]["name"], "standalone")


@pytest.mark.parametrize("name", PROFILES)
def test_every_sample_is_valid_kubernetes(name: str) -> None:
    docs = _docs(name)
    assert [d["kind"] for d in docs[:2]] == ["Namespace", "ConfigMap"]
    assert _by_kind(docs, "Service") and any(d["kind"] in WORKLOADS for d in docs)


def test_the_schema_check_refuses_what_a_cluster_would() -> None:
    """The check bites: a string count, an unknown field and a missing image are each reported."""
    (deployment,) = _by_kind(_docs("tencent"), "Deployment")
    broken = copy.deepcopy(deployment)
    broken["spec"]["replicas"] = "one"
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    del broken["spec"]["selector"]
    problems = schemas.problems(broken)
    assert any("replicas" in p for p in problems)
    assert any("imagePullPolicyy" in p for p in problems)
    assert any("selector" in p for p in problems)


@pytest.mark.parametrize("name", PROFILES)
def test_each_container_gets_every_variable_its_config_reads_from_the_secret(name: str) -> None:
    profile = load_profile(name)
    docs = _docs(name)
    (config_map,) = _by_kind(docs, "ConfigMap")
    for workload in (d for d in docs if d["kind"] in WORKLOADS):
        container = _container(workload)
        (arg,) = container["args"]
        key = arg.removeprefix(f"--config={kubernetes.CONFIG_DIR}/")
        config = config_map["data"][key]
        assert config == render_collector_config(profile, _role(workload))
        from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
        assert sorted(from_secret) == env_vars_referenced(config)
        for var, ref in from_secret.items():
            assert ref == {"name": profile.data["deploy"]["secret_name"], "key": var}
        # Literal values: only GOMEMLIMIT, never a secret.
        assert [e["name"] for e in container["env"] if "value" in e] == ["GOMEMLIMIT"]


def test_the_two_tier_profile_reads_its_secrets() -> None:
    """A guard on the test above: aliyun's tiers do read variables, so an empty env would not pass unnoticed. The
    agents hash user ids (the salt); only the gateways, which remote-write, hold the backend's credentials."""
    docs = _docs("aliyun")
    (agents,) = _by_kind(docs, "DaemonSet")
    (gateways,) = _by_kind(docs, "StatefulSet")
    agent_env = {e["name"] for e in _container(agents)["env"]}
    gateway_env = {e["name"] for e in _container(gateways)["env"]}
    backend = {"TOKENLAT_ARMS_BASIC_AUTH", "TOKENLAT_REMOTE_WRITE_URL"}
    assert "TOKENLAT_USER_ID_SALT" in agent_env and not backend & agent_env
    assert backend <= gateway_env


@pytest.mark.parametrize("name", PROFILES)
def test_every_tls_file_is_mounted_where_the_config_names_it(name: str) -> None:
    profile = load_profile(name)
    for workload in (d for d in _docs(name) if d["kind"] in WORKLOADS):
        pod = workload["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounted = set()
        for mount in _container(workload)["volumeMounts"]:
            secret = volumes[mount["name"]].get("secret")
            if secret:
                assert mount["readOnly"] is True
                mounted |= {f"{mount['mountPath']}/{item['path']}" for item in secret["items"]}
        assert mounted == set(runtime.tls_files(profile))


def test_a_profile_with_tls_mounts_certificates() -> None:
    """A guard on the test above: the TLS profiles do name files."""
    assert len(runtime.tls_files(load_profile("thanos"))) == 3
    assert len(runtime.tls_files(load_profile("aliyun"))) == 3


@pytest.mark.parametrize("name", PROFILES)
def test_probes_memory_and_security(name: str) -> None:
    profile = load_profile(name)
    limiter = profile.data["pipeline"]["memory_limiter"]
    health_port = runtime.host_port(profile.data["service"]["health_endpoint"])[1]
    for workload in (d for d in _docs(name) if d["kind"] in WORKLOADS):
        container = _container(workload)
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["health"] == health_port
        for probe in ("livenessProbe", "readinessProbe"):
            assert container[probe]["httpGet"] == {"path": "/", "port": "health"}
        resources = container["resources"]
        assert resources["requests"]["memory"] == f"{limiter['limit_mib']}Mi"
        hard = int(resources["limits"]["memory"].removesuffix("Mi"))
        assert limiter["limit_mib"] < hard <= 2 * limiter["limit_mib"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["GOMEMLIMIT"] == f"{limiter['limit_mib']}MiB"
        pod_security = workload["spec"]["template"]["spec"]["securityContext"]
        assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
        assert container["securityContext"]["readOnlyRootFilesystem"] is True


def test_two_tier_layout_agents_and_gateway_statefulset() -> None:
    profile = load_profile("aliyun")
    docs = _docs("aliyun")
    (gateways,) = _by_kind(docs, "StatefulSet")
    assert gateways["spec"]["replicas"] == profile.data["deploy"]["gateway_replicas"] == 2
    headless = next(d for d in _by_kind(docs, "Service") if d["metadata"]["name"] == gateways["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    namespace = profile.data["deploy"]["namespace"]
    expected = [f"tokenlat-gateway-{i}.tokenlat-gateway.{namespace}.svc:4317" for i in range(2)]
    assert sorted(profile.data["tiers"]["gateways"]) == expected
    assert _by_kind(docs, "DaemonSet") and not _by_kind(docs, "Deployment")
    (config_map,) = _by_kind(docs, "ConfigMap")
    assert sorted(config_map["data"]) == ["agent.yaml", "gateway.yaml"]


def test_gateways_that_are_not_the_statefulset_pods_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"extends": "aliyun", "deploy": {"gateway_replicas": 3}}), encoding="utf-8")
    with pytest.raises(RenderError, match=re.escape("tokenlat-gateway-2.tokenlat-gateway.observability.svc:4317")):
        kubernetes.render(load_profile(str(path)))


def test_single_tier_with_wal_claims_a_volume() -> None:
    profile = load_profile("selfhosted")
    docs = _docs("selfhosted")
    (deployment,) = _by_kind(docs, "Deployment")
    (claim,) = _by_kind(docs, "PersistentVolumeClaim")
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    mounts = {m["name"]: m["mountPath"] for m in _container(deployment)["volumeMounts"]}
    assert mounts["wal"] == profile.data["backend"]["wal"]["directory"]
    assert claim["spec"]["resources"]["requests"]["storage"] == profile.data["deploy"]["wal_storage"]


def test_loopback_profiles_are_flagged() -> None:
    """local binds everything to 127.0.0.1: a pod's probes could not reach it, and the render says so."""
    assert "WARNING: this profile binds" in kubernetes.render(load_profile("local"))
    assert "WARNING" not in kubernetes.render(load_profile("tencent"))


def test_render_command_reports_mismatched_gateways_as_bad_usage(tmp_path: Path, runner: CliRunner) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"extends": "aliyun", "deploy": {"namespace": "otel"}}), encoding="utf-8")
    result = runner.invoke(cli, ["render", "--profile", str(path), "--what", "k8s"])
    assert result.exit_code == 2 and "tokenlat-gateway-0.tokenlat-gateway.otel.svc:4317" in result.output
