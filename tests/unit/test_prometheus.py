"""Which Prometheus verify starts, the flags for its version, and the pinned builds the Makefile makes."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tokenlat_cli.verify.processes import ServiceError
from tokenlat_cli.verify.prometheus import (
    PROMETHEUS3_ENV,
    PROMETHEUS3_VERSION,
    PROMETHEUS_ENV,
    Prometheus,
    find_prometheus,
    find_prometheus3,
    prometheus3_install_path,
    prometheus_release,
)
from tokenlat_cli.verify.thanos import THANOS_VERSION


def _fake(path: Path, version_output: str = "prometheus, version 3.16.0 (branch: , revision: unknown)") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\necho '{version_output}'\n", encoding="utf-8")
    path.chmod(0o755)
    return path


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No override, an empty cache and an empty PATH: each test adds what it needs."""
    for var in (PROMETHEUS_ENV, PROMETHEUS3_ENV):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    (tmp_path / "bin").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    return tmp_path


def test_the_makefile_builds_the_pinned_versions() -> None:
    # The Makefile reads both versions from the Python modules with sed: a reformatted pin line would make it build
    # an empty version while find_thanos()/find_prometheus3() look for the pinned one.
    dry_run = subprocess.run(
        ["make", "-s", "-n", "thanos", "prometheus3"], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert dry_run.stdout.splitlines() == [
        f"scripts/install-thanos.sh {THANOS_VERSION}",
        f"scripts/install-prometheus.sh {PROMETHEUS3_VERSION}",
    ]
    assert prometheus3_install_path().parent.name == f"prometheus-{PROMETHEUS3_VERSION}"


def test_module_versions_map_to_releases() -> None:
    assert prometheus_release("v0.316.0") == "3.16.0"
    assert prometheus_release("v0.300.1") == "3.0.1"
    assert prometheus_release("v0.405.2") == "4.5.2"
    with pytest.raises(ValueError, match="not a Prometheus 3"):
        prometheus_release("v0.55.0")  # a Prometheus 2 era module version: no 2.x release maps to it this way


def test_default_prefers_the_pinned_prometheus_3_then_path(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ServiceError, match=r"prometheus not found: run `make prometheus3`"):
        find_prometheus()
    debian = _fake(clean_env / "bin" / "prometheus", "prometheus, version 2.42.0+ds")
    assert find_prometheus() == debian
    built = _fake(prometheus3_install_path())
    assert str(built).startswith(str(clean_env / "cache" / "tokenlat" / f"prometheus-{PROMETHEUS3_VERSION}"))
    assert find_prometheus() == built
    other3 = _fake(clean_env / "other" / "prometheus")
    monkeypatch.setenv(PROMETHEUS3_ENV, str(other3))
    assert find_prometheus() == find_prometheus3() == other3
    monkeypatch.setenv(PROMETHEUS_ENV, str(debian))  # the explicit choice wins over everything
    assert find_prometheus() == debian


def test_find_prometheus3_never_takes_prometheus_on_path(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake(clean_env / "bin" / "prometheus", "prometheus, version 2.42.0+ds")
    with pytest.raises(ServiceError, match=rf"run `make prometheus3` to build {prometheus_release()} into "):
        find_prometheus3()
    monkeypatch.setenv(PROMETHEUS3_ENV, str(clean_env / "nope"))
    with pytest.raises(ServiceError, match=rf"{PROMETHEUS3_ENV}=.* is not an executable file"):
        find_prometheus()  # a wrong explicit setting is an error, not a quiet fall back to PATH


def test_probe_reads_the_version(tmp_path: Path) -> None:
    debian = _fake(tmp_path / "debian", "prometheus, version 2.42.0+ds (branch: debian/sid, revision: 2.42.0+ds-5)")
    assert Prometheus.probe(debian) == Prometheus(debian, "2.42.0+ds", (2, 42, 0))
    assert Prometheus.probe(_fake(tmp_path / "p3")).version_info == (3, 16, 0)
    for name, script in (("broken", "echo 'segfault' >&2; exit 2"), ("other", "echo 'thanos, version 0.42.4'")):
        path = tmp_path / name
        path.write_text(f"#!/bin/sh\n{script}\n", encoding="utf-8")
        path.chmod(0o755)
        with pytest.raises(ServiceError, match=r"--version` \(exit code \d\) does not say which Prometheus it is"):
            Prometheus.probe(path)


@pytest.mark.parametrize(
    ("version", "features"),
    [
        ((2, 42, 0), "native-histograms,exemplar-storage"),
        ((3, 7, 3), "native-histograms,exemplar-storage"),
        ((3, 8, 0), "exemplar-storage"),  # native histograms are always stored: the flag only warns, then is a no-op
        ((3, 16, 0), "exemplar-storage"),
    ],
)
def test_receiver_flags_follow_the_version(version: tuple[int, int, int], features: str) -> None:
    prometheus = Prometheus(Path("prometheus"), ".".join(map(str, version)), version)
    assert prometheus.receiver_flags() == ["--web.enable-remote-write-receiver", f"--enable-feature={features}"]
