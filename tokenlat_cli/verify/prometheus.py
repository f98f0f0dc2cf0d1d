"""Which Prometheus verify starts, and the flags that version needs to be a remote-write receiver.

Two are in use: Debian's package (2.42, on PATH) and a current Prometheus 3 built from its module source by `make
prometheus3` (scripts/install-prometheus.sh) into the user's cache. $PROMETHEUS_BIN picks one explicitly; otherwise
verify prefers the pinned Prometheus 3 when it is built, since that is what a new deployment runs, and falls back
to prometheus on PATH. The test suite runs verify against both.

The flags differ by version, so verify asks the binary (`prometheus --version`) instead of assuming:

- ``--web.enable-remote-write-receiver``: both (2.33+), the endpoint the Collector writes to.
- ``native-histograms``: needed up to 3.7 for the TSDB to store native histograms (what exponential histograms
  become through remote write). From 3.8 it always stores them and the flag only changes the scrape default, with
  a warning; from 3.9 it is a no-op. So it is passed to versions before 3.8 only.
- ``exemplar-storage``: still an experimental feature flag in 3.16. Without it Prometheus drops the exemplars the
  Collector forwards (the trace ids of the requests) without a word; a production backend keeps them.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from tokenlat_cli.binaries import cached_build_path, find_binary
from tokenlat_cli.verify.processes import ServiceError

# Prometheus 3.16.0: Prometheus 3.X.Y is published on the Go module proxy as v0.3XX.Y. scripts/install-prometheus.sh
# builds this version, and the Makefile reads it from this line.
PROMETHEUS3_VERSION = "v0.316.0"
PROMETHEUS_ENV = "PROMETHEUS_BIN"
PROMETHEUS3_ENV = "TOKENLAT_PROMETHEUS3_BIN"
_VERSION_LINE = re.compile(r"^prometheus, version (\d+)\.(\d+)\.(\d+)(\S*)", re.MULTILINE)
_MODULE_VERSION = re.compile(r"^v0\.([3-9])(\d\d)\.(\d+)$")
# The first release whose TSDB stores native histograms without --enable-feature=native-histograms (in 3.7's
# cmd/prometheus/main.go the flag sets tsdb.EnableNativeHistograms; in 3.8's only the scrape default).
NATIVE_HISTOGRAMS_ALWAYS_ON = (3, 8)


def prometheus_release(module_version: str = PROMETHEUS3_VERSION) -> str:
    """The release a module version is: v0.316.0 -> 3.16.0 (as scripts/install-prometheus.sh stamps it)."""
    match = _MODULE_VERSION.match(module_version)
    if match is None:
        raise ValueError(f"{module_version} is not a Prometheus 3+ module version (v0.3XX.Y)")
    major, minor, patch = match.groups()
    return f"{major}.{int(minor)}.{patch}"


def prometheus3_install_path(version: str = PROMETHEUS3_VERSION) -> Path:
    """Where `make prometheus3` puts the binary: the user's cache, outside the repository."""
    return cached_build_path("prometheus", version)


def find_prometheus3() -> Path:
    """$TOKENLAT_PROMETHEUS3_BIN, else the binary `make prometheus3` built. Never prometheus on PATH: that is
    Debian's 2.42, not a stand-in for the pinned build."""
    installed = prometheus3_install_path()
    how = f"run `make prometheus3` to build {prometheus_release()} into {installed.parent}"
    return find_binary("prometheus", PROMETHEUS3_ENV, how, ServiceError, [installed], search_path=False)


def find_prometheus() -> Path:
    """The Prometheus verify starts: $PROMETHEUS_BIN; else the pinned Prometheus 3 when there is one
    ($TOKENLAT_PROMETHEUS3_BIN, or what `make prometheus3` built); else prometheus on PATH (Debian's package)."""
    if os.environ.get(PROMETHEUS3_ENV) and not os.environ.get(PROMETHEUS_ENV):
        return find_prometheus3()
    how = "run `make prometheus3`, or install Debian's (`apt-get install prometheus`, or `make prometheus`)"
    return find_binary("prometheus", PROMETHEUS_ENV, how, ServiceError, [prometheus3_install_path()])


@dataclass(frozen=True)
class Prometheus:
    """A Prometheus binary and the version it reports."""

    path: Path
    #: As reported, e.g. ``2.42.0+ds`` (Debian's) or ``3.16.0``.
    version: str
    version_info: tuple[int, int, int]

    @classmethod
    def probe(cls, path: Path) -> Prometheus:
        """Ask the binary which version it is (`prometheus --version`)."""
        try:
            result = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ServiceError(f"`{path} --version` failed: {exc}") from exc
        output = result.stdout + result.stderr
        match = _VERSION_LINE.search(output)
        if result.returncode != 0 or match is None:
            raise ServiceError(
                f"`{path} --version` (exit code {result.returncode}) does not say which Prometheus it is: "
                f"{output.strip()[:500] or '(no output)'}"
            )
        major, minor, patch, suffix = match.groups()
        return cls(path, f"{major}.{minor}.{patch}{suffix}", (int(major), int(minor), int(patch)))

    def receiver_flags(self) -> list[str]:
        """The flags that make this version a remote-write receiver for verify (see the module docstring)."""
        features = ["exemplar-storage"]
        if self.version_info[:2] < NATIVE_HISTOGRAMS_ALWAYS_ON:
            features.insert(0, "native-histograms")
        return ["--web.enable-remote-write-receiver", f"--enable-feature={','.join(features)}"]
