"""The built Collector against the rendered configs: every committed config accepted, a broken one refused, every
component the templates use present at the pinned release."""

from __future__ import annotations

import re
import struct
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.conftest import DATA, REPO
from tests.unit.test_render import REQUIRED_COMPONENTS
from tokenlat import semconv
from tokenlat.buckets import BucketLayout
from tokenlat_cli.collector import validate_config
from tokenlat_cli.configs import expected_configs
from tokenlat_cli.main import cli
from tokenlat_cli.manifest import read_release
from tokenlat_cli.profiles import load_profile
from tokenlat_cli.render import render_collector_config


@pytest.mark.parametrize("name", sorted(expected_configs()))
def test_built_collector_accepts_every_committed_config(collector_binary: Path, name: str) -> None:
    validate_config(expected_configs()[name])


def test_built_collector_accepts_the_full_profile(collector_binary: Path) -> None:
    validate_config(render_collector_config(load_profile(str(DATA / "full.yaml"))))


def test_built_collector_rejects_a_broken_config(collector_binary: Path) -> None:
    rendered = render_collector_config(load_profile("local"))
    broken = rendered.replace("aggregate_on_attributes(", "aggregate_on_attributez(")
    with pytest.raises(Exception, match="aggregate_on_attributez"):
        validate_config(broken)


def test_distribution_has_every_component(collector_binary: Path) -> None:
    listed = yaml.safe_load(
        subprocess.run([str(collector_binary), "components"], capture_output=True, text=True, check=True).stdout
    )
    for kind, names in REQUIRED_COMPONENTS.items():
        present = {component["name"] for component in listed[kind]}
        assert names <= present, f"{kind} missing: {sorted(names - present)}"
    release = read_release()
    modules = {c["module"].split()[1] for kind in REQUIRED_COMPONENTS for c in listed[kind]}
    assert modules == {release.beta}, f"all modules must be at collector/VERSION ({release}), got {modules}"
    # The providers the manifest lists, at the release's stable twin: not ocb's defaults of another release.
    providers = {p["scheme"]: p["module"].split()[1] for p in listed["providers"]}
    assert providers == dict.fromkeys(("env", "file", "yaml", "http", "https"), release.stable), providers


def elf_section_names(path: Path) -> set[str]:
    """The section names of a little-endian ELF64 file (what `readelf -S` lists), from its section headers."""
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF" and data[4] == 2 and data[5] == 1, f"{path}: not a little-endian ELF64 file"
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", data, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", data, shoff + i * shentsize) for i in range(shnum)]
    strtab_offset = headers[shstrndx][4]
    return {data[strtab_offset + name : data.index(b"\0", strtab_offset + name)].decode() for name, *_ in headers}


def test_distribution_is_stripped_and_its_documented_size_holds(collector_binary: Path) -> None:
    sections = elf_section_names(collector_binary)
    assert ".symtab" not in sections, "the release binary must be stripped (-s): it has a symbol table"
    assert not {s for s in sections if s.startswith((".debug_", ".zdebug_"))}, "it must carry no DWARF (-w)"
    # README's figure is what readers plan with: keep it within 10% of what the build gives.
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    documented = int(re.search(r"MiB stripped \(([\d,]+) bytes\)", readme)[1].replace(",", ""))
    size = collector_binary.stat().st_size
    assert abs(size - documented) <= documented / 10, f"README says {documented} bytes stripped, the build is {size}"


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
