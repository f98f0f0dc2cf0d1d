"""The built Collector against the rendered configs: every committed config accepted, a broken one refused, every
component the templates use present at the pinned release."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import DATA
from tests.unit.test_render import REQUIRED_COMPONENTS
from tokenlat import semconv
from tokenlat.buckets import BucketLayout
from tokenlat_cli.collector import validate_config
from tokenlat_cli.configs import expected_configs
from tokenlat_cli.main import cli
from tokenlat_cli.profiles import load_profile
from tokenlat_cli.render import render_collector_config


@pytest.mark.parametrize("name", sorted(expected_configs()))
def test_built_collector_accepts_every_committed_config(collector_binary: Path, name: str) -> None:
    validate_config(expected_configs()[name])


def test_built_collector_accepts_the_full_profile(collector_binary: Path) -> None:
    validate_config(render_collector_config(load_profile(str(DATA / "full.yaml"))))


def test_built_collector_rejects_a_broken_config(collector_binary: Path) -> None:
    broken = render_collector_config(load_profile("local")).replace("keep_keys(", "keep_keyz(")
    with pytest.raises(Exception, match="keep_keyz"):
        validate_config(broken)


def test_distribution_has_every_component(collector_binary: Path) -> None:
    listed = yaml.safe_load(
        subprocess.run([str(collector_binary), "components"], capture_output=True, text=True, check=True).stdout
    )
    for kind, names in REQUIRED_COMPONENTS.items():
        present = {component["name"] for component in listed[kind]}
        assert names <= present, f"{kind} missing: {sorted(names - present)}"
    modules = {c["module"].split()[1] for kind in REQUIRED_COMPONENTS for c in listed[kind]}
    assert modules == {"v0.161.0"}, f"all modules must be at one release, got {modules}"


def test_render_native_histograms_with_custom_buckets(runner: CliRunner, tmp_path: Path) -> None:
    path = tmp_path / "nhcb.yaml"
    path.write_text("extends: local\nmetrics:\n  histograms: classic\n  native_custom_buckets: true\n")
    result = runner.invoke(cli, ["render", "--profile", str(path)])
    assert result.exit_code == 0
    assert "    convert_explicit_histograms_to_nhcb: true\n" in result.stdout
    assert "sent as native histograms with custom buckets" in result.stderr
    buckets = len(BucketLayout().bounds(semconv.TIME_TO_FIRST_TOKEN))
    assert f"gen_ai_server_time_to_first_token_seconds: {buckets} buckets, 1 series per attribute set" in result.stderr
    validate_config(result.stdout)  # the pinned Collector knows the setting
