"""`render --what systemd` and `--what environment-file`: the unit runs the Collector hardened, with memory sized
from memory_limiter and secrets only by EnvironmentFile; the environment file lists names and never a value.
(`systemd-analyze verify` and `security` run in tests/e2e/test_deploy_tools.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tokenlat_cli.operate import environment_file, runtime, systemd
from tokenlat_cli.profiles import builtin_names, load_profile
from tokenlat_cli.render import env_vars_referenced, render_collector_config


def _settings(unit: str) -> list[tuple[str, str]]:
    return [tuple(line.split("=", 1)) for line in unit.splitlines() if "=" in line and not line.startswith("#")]


@pytest.mark.parametrize("name", builtin_names())
def test_unit_is_hardened_and_holds_no_secret(name: str) -> None:
    profile = load_profile(name)
    settings = _settings(systemd.render(profile))
    keys = dict(settings)
    assert keys["DynamicUser"] == "yes" and keys["ProtectSystem"] == "strict" and keys["NoNewPrivileges"] == "yes"
    assert keys["ExecStart"] == f"{runtime.BINARY} --config={systemd.CONFIG}"
    assert keys["EnvironmentFile"] == systemd.ENVIRONMENT_FILE
    # The only literal environment is GOMEMLIMIT: every variable the config reads comes from the EnvironmentFile.
    assert [v for k, v in settings if k == "Environment"] == [f"GOMEMLIMIT={runtime.memory(profile).gomemlimit}"]
    limit = profile.data["pipeline"]["memory_limiter"]["limit_mib"]
    assert limit < int(keys["MemoryMax"].removesuffix("M")) <= 2 * limit
    credentials = dict(v.split(":", 1) for k, v in settings if k == "LoadCredential")
    assert sorted(credentials.values()) == sorted(runtime.tls_files(profile))
    binds = [v for k, v in settings if k == "BindReadOnlyPaths"]
    assert binds == [f"%d/{c}:{path}" for c, path in credentials.items()]


def test_tls_and_wal_profiles_get_credentials_and_state() -> None:
    """Guards on the test above: these profiles do have files to hand over and a WAL to keep."""
    assert systemd.render(load_profile("thanos")).count("LoadCredential=") == 3
    assert "StateDirectory=tokenlat/wal" in systemd.render(load_profile("selfhosted"))


def test_a_privileged_port_gets_exactly_the_capability_to_bind_it(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"extends": "tencent", "receiver": {"grpc_endpoint": "0.0.0.0:443"}}), "utf-8")
    unit = systemd.render(load_profile(str(path)))
    assert "AmbientCapabilities=CAP_NET_BIND_SERVICE" in unit
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" in unit
    assert "CAP_NET_BIND_SERVICE" not in systemd.render(load_profile("tencent"))


@pytest.mark.parametrize("name", builtin_names())
def test_environment_file_lists_every_variable_and_no_value(name: str) -> None:
    profile = load_profile(name)
    text = environment_file.render(profile)
    assert all(line.startswith("#") for line in text.splitlines()), "an uncommented line could carry a value"
    listed = [line[1:-1] for line in text.splitlines() if line.startswith("#TOKENLAT") or line.endswith("=")]
    roles = [t.role for t in runtime.tiers(profile)]
    needed = sorted({v for role in roles for v in env_vars_referenced(render_collector_config(profile, role))})
    assert listed == needed


def test_environment_file_of_a_profile_with_secrets() -> None:
    text = environment_file.render(load_profile("aliyun"))
    assert "#TOKENLAT_ARMS_BASIC_AUTH=\n" in text and "basic auth" in text
