"""The real Prometheus binaries (the pinned 3.x and Debian's 2.42) know every flag and feature verify passes them."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from tokenlat_cli.verify.prometheus import Prometheus


def _help(binary: Path) -> str:
    """`prometheus --help` with kingpin's line wrapping undone."""
    result = subprocess.run([str(binary), "--help"], capture_output=True, text=True, check=False)
    return " ".join((result.stdout + result.stderr).split())


def _valid_features(help_text: str) -> set[str]:
    """The feature names --enable-feature's help lists (2.42 marks some "(DEPRECATED)")."""
    match = re.search(r"Valid options: (.*?)\. See", help_text)
    assert match, help_text
    return {name.replace("(DEPRECATED)", "").strip() for name in match.group(1).split(",")}


@pytest.mark.parametrize("which", ["prometheus3_binary", "debian_prometheus_binary"])
def test_the_real_binaries_know_every_flag_verify_passes(which: str, request: pytest.FixtureRequest) -> None:
    binary: Path = request.getfixturevalue(which)
    prometheus = Prometheus.probe(binary)
    assert prometheus.version.startswith("3." if which == "prometheus3_binary" else "2.")
    receiver, features = prometheus.receiver_flags()
    help_text = _help(binary)
    # 3.x lists boolean flags as --[no-]name.
    assert re.search(rf"--(\[no-\])?{re.escape(receiver.removeprefix('--'))} ", help_text), receiver
    passed = set(features.removeprefix("--enable-feature=").split(","))
    assert passed <= _valid_features(help_text), passed - _valid_features(help_text)
