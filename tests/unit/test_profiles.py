"""Profile loading and schema errors, through the CLI exactly as an operator sees them."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.conftest import REPO
from tokenlat_cli.main import cli
from tokenlat_cli.profiles import PROFILE_SCHEMA, builtin_names, load_profile

MINIMAL = "backend:\n  endpoint: http://127.0.0.1:9090/api/v1/write\n"


def _render(runner: CliRunner, tmp_path: Path, profile_text: str) -> tuple[int, str, Path]:
    profile = tmp_path / "p.yaml"
    profile.write_text(profile_text, encoding="utf-8")
    out = tmp_path / "out.yaml"
    result = runner.invoke(cli, ["render", "--profile", str(profile), "-o", str(out)])
    return result.exit_code, result.output, out


def test_unknown_profile_name_lists_the_known_ones(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["render", "--profile", "nosuch"])
    assert result.exit_code == 2
    assert f"Error: nosuch: no such built-in profile; known profiles: {', '.join(builtin_names())}" in result.output
    assert "local" in builtin_names()


def test_missing_file(runner: CliRunner, tmp_path: Path) -> None:
    result = runner.invoke(cli, ["render", "--profile", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 2
    assert f"Error: {tmp_path / 'absent.yaml'}: no such file" in result.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("backend: [1, 2\n", "line 2, column 1: invalid YAML: expected ',' or ']', but got '<stream end>'"),
        ("- a list\n", "must be a mapping, got a list"),
        ("backend: {}\n", "backend.endpoint: is required"),
        (
            MINIMAL + "  auth: {kind: oauth}\n",
            "backend.auth.kind: must be one of basic, bearer, none, got 'oauth'",
        ),
        (MINIMAL + "  auth: {kind: bearer}\n", "backend.auth.token_env: is required when backend.auth.kind is bearer"),
        (
            MINIMAL + "  auth: {kind: none, token_env: TOKEN}\n",
            "backend.auth.token_env: does not apply when backend.auth.kind is none",
        ),
        (
            MINIMAL + "  auth: {kind: bearer, token_env: my-token}\n",
            "backend.auth.token_env: 'my-token' is not an environment variable name like MY_TOKEN",
        ),
        (
            MINIMAL + "  headers: {Authorization: Bearer abcdef0123456789}\n",
            "backend.headers.Authorization: looks like a literal secret; reference an environment variable "
            "instead, e.g. ${env:MY_TOKEN}",
        ),
        (MINIMAL + "  colour: blue\n", "backend.colour: unknown field (known here: kind, endpoint, tenant, tls"),
        (MINIMAL + "pipeline:\n  batch: {timeout: 5}\n", "pipeline.batch.timeout: must be a string, got int"),
        (
            MINIMAL + "pipeline:\n  batch: {timeout: soon}\n",
            "pipeline.batch.timeout: 'soon' is not a duration like 500ms, 5s, 1m",
        ),
        (
            MINIMAL + "pipeline:\n  memory_limiter: {limit_mib: 256, spike_limit_mib: 256}\n",
            "pipeline.memory_limiter.spike_limit_mib: must be below pipeline.memory_limiter.limit_mib (256)",
        ),
        (
            MINIMAL + "metrics:\n  attributes: [gen_ai.request.model, request.id]\n",
            "metrics.attributes[1]: 'request.id' identifies a request or a user and must not become a metric label",
        ),
        (
            MINIMAL + "metrics:\n  attributes: [a, a]\n",
            "metrics.attributes[1]: 'a' is listed twice",
        ),
        (
            MINIMAL + "receiver:\n  tls: {enabled: true, cert_file: /c.pem}\n",
            "receiver.tls.key_file: is required when receiver.tls.enabled is true",
        ),
        (MINIMAL + "traces: {enabled: true}\n", "traces.endpoint: is required when traces.enabled is true"),
        (
            MINIMAL + "traces: {sample_percentage: 150}\n",
            "traces.sample_percentage: must be at most 100.0, got 150",
        ),
        (MINIMAL + "receiver:\n  grpc_endpoint: 4317\n", "receiver.grpc_endpoint: must be a string, got int"),
        (
            "backend:\n  endpoint: https://user:pa55@example.invalid/api/v1/write\n",
            "backend.endpoint: credentials in the URL are a literal secret; use backend.auth with an environment "
            "variable",
        ),
        (MINIMAL + "  tenant: t1\n", "backend.tenant: only applies when backend.kind is thanos"),
        (
            MINIMAL + "  tls: {cert_file: /c.pem}\n",
            "backend.tls.key_file: a client certificate needs both cert_file and key_file",
        ),
        (
            MINIMAL + "metrics:\n  cardinality: {tokenlat.scene: 3}\n  attributes: [gen_ai.request.model]\n",
            "metrics.cardinality.tokenlat.scene: is not in metrics.attributes",
        ),
        (
            MINIMAL + "metrics:\n  cardinality: {gen_ai.request.model: 0}\n",
            "metrics.cardinality.gen_ai.request.model: must be at least 1",
        ),
        (
            MINIMAL + "metrics:\n  values: {tokenlat.scene: [a]}\n  attributes: [gen_ai.request.model]\n",
            "metrics.values.tokenlat.scene: is not in metrics.attributes",
        ),
        (
            MINIMAL + "metrics:\n  values: {gen_ai.request.model: []}\n",
            "metrics.values.gen_ai.request.model: must list",
        ),
        (
            MINIMAL + "metrics:\n  values: {gen_ai.request.model: [a, a]}\n",
            "metrics.values.gen_ai.request.model[1]: 'a' is listed twice",
        ),
        (
            MINIMAL + "metrics:\n  values: {gen_ai.request.model: [a]}\n  cardinality: {gen_ai.request.model: 2}\n",
            "metrics.cardinality.gen_ai.request.model: metrics.values.gen_ai.request.model lists its values already",
        ),
        (MINIMAL + "metrics:\n  values: [a]\n", "metrics.values: must be a mapping, got a list"),
        (MINIMAL + "metrics:\n  max_value_chars: 0\n", "metrics.max_value_chars: must be at least 1"),
        (
            "extends: nosuch\n",
            "extends: must name a built-in profile (aliyun, local, selfhosted, tencent, thanos), got 'nosuch'",
        ),
        (
            MINIMAL + "  kind: mimir\n",
            "backend.kind: must be one of aliyun, prometheus, tencent, thanos, victoriametrics",
        ),
        (MINIMAL + "metrics:\n  histograms: sparse\n", "metrics.histograms: must be one of classic, native"),
        (
            MINIMAL + "metrics:\n  buckets: 'geometric:1.5'\n",
            "metrics.buckets: ttft: target 1.5: must be between 0 and 1 (exclusive)",
        ),
        (MINIMAL + "metrics:\n  buckets: 'geometric;ttft=30-0.02'\n", "metrics.buckets: ttft: range 30-0.02"),
        (
            MINIMAL + "metrics:\n  buckets: 'geometric:0.001'\n",
            "metrics.buckets: ttft: range 0.02-30 at 0.001 needs 7402 buckets, more than 400",
        ),
        (
            MINIMAL + "metrics:\n  histograms: native\n  native_custom_buckets: true\n",
            "metrics.native_custom_buckets: applies to classic histograms only",
        ),
    ],
)
def test_schema_errors_name_file_field_and_reason(runner: CliRunner, tmp_path: Path, text: str, message: str) -> None:
    code, output, out = _render(runner, tmp_path, text)
    assert code == 2, output
    assert f"Error: {tmp_path / 'p.yaml'}: {message}" in output
    assert not out.exists(), "nothing may be written for a bad profile"
    assert list(tmp_path.iterdir()) == [tmp_path / "p.yaml"], "no temp file left behind"


def test_defaults_fill_every_field(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(MINIMAL, encoding="utf-8")
    data = load_profile(str(path)).data
    for dotted, node in PROFILE_SCHEMA.walk():
        value = data
        for part in dotted.split("."):
            value = value[part]
        if not node.required and not hasattr(node, "fields"):
            assert value == node.default, dotted


def test_every_builtin_profile_loads() -> None:
    for name in builtin_names():
        profile = load_profile(name)
        assert profile.name == name
        assert profile.data["description"], f"{name} needs a description for `tokenlat profiles`"


def test_profiles_command_lists_builtins(runner: CliRunner) -> None:
    result = runner.invoke(cli, ["profiles"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == builtin_names()


def test_schema_reference_documents_every_field() -> None:
    doc = (REPO / "docs" / "profiles.md").read_text(encoding="utf-8")
    missing = [path for path, _ in PROFILE_SCHEMA.walk() if f"`{path}`" not in doc]
    assert not missing, f"docs/profiles.md does not document: {missing}"


def test_extends_merges_over_a_builtin_profile(tmp_path: Path) -> None:
    path = tmp_path / "prod.yaml"
    path.write_text(
        "extends: aliyun\nbackend:\n  timeout: 30s\ntraces:\n  sample_percentage: 1\ntiers:\n  gateways: []\n",
        encoding="utf-8",
    )
    merged = load_profile(str(path)).data
    base = load_profile("aliyun").data
    assert merged["backend"]["timeout"] == "30s"
    assert merged["backend"]["auth"] == base["backend"]["auth"]  # inherited
    assert merged["traces"]["sample_percentage"] == 1.0 and merged["tiers"]["gateways"] == []  # lists replace
    assert merged["receiver"] == base["receiver"]
    assert merged["extends"] == "aliyun"


def test_literal_secrets_never_reach_a_rendered_builtin_config() -> None:
    for name in builtin_names():
        auth = load_profile(name).data["backend"]["auth"]
        assert auth["kind"] == "none" or auth["credentials_env"] or auth["token_env"]
