"""The Collector release, pinned once in collector/VERSION, and the ocb manifest checked against it.

collector/VERSION holds the core release (v0.N.P). ocb's manifest cannot read a variable, so
collector/builder-config.yaml spells the release out on every gomod line; `check_manifest` proves that every
one of them agrees with collector/VERSION, without Go and without a build:

- core modules (go.opentelemetry.io/collector/...) at v0.N.P are the release itself; core modules at v1.M.P are
  the stable ones (pdata, component, the confmap providers, ...) that the core releases alongside it, with
  M = N - 94 (`Release.stable`);
- contrib modules (github.com/open-telemetry/opentelemetry-collector-contrib/...) share the release's v0.N; their
  patch may differ, since contrib cuts patch releases of its own (contrib v0.165.1 goes with core v0.165.0);
- `dist.otelcol_version`, where a manifest has it (older ocb releases), is the release itself.

Modules from elsewhere (a vendor's component, replaces) follow their own versions and are not checked.
`python -m tokenlat_cli.manifest` checks the checkout's manifest: collector/build.sh runs it before a build, and
tests/unit/test_collector_versions.py runs the same check.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

COLLECTOR_DIR = Path(__file__).resolve().parents[1] / "collector"
VERSION_FILE = COLLECTOR_DIR / "VERSION"
MANIFEST_FILE = COLLECTOR_DIR / "builder-config.yaml"

CORE_PREFIX = "go.opentelemetry.io/collector/"
CONTRIB_PREFIX = "github.com/open-telemetry/opentelemetry-collector-contrib/"
# The core's stable modules are released as v1.M with every v0.N: pdata v1.0.0 came out with v0.94.0, and the
# offset has held since (ocb pins its default providers at the release's v1.M: DefaultStableOtelColVersion in
# cmd/builder/internal/builder/config.go; the Go module proxy's notes pair v0.165.0 with v1.71.0).
STABLE_MINOR_OFFSET = 94
# The manifest's sections that list components as [{gomod: ...}, ...].
MODULE_SECTIONS = ("receivers", "processors", "exporters", "extensions", "connectors", "providers", "converters")
_RELEASE = re.compile(r"v0\.(\d+)\.(\d+)")
_VERSION = re.compile(r"v(\d+)\.(\d+)\.(\d+)")


class ManifestError(ValueError):
    """collector/VERSION or the manifest cannot be read as what they must be."""


@dataclass(frozen=True)
class Release:
    """A Collector core release: v0.N.P, with its stable twin v1.(N - 94).P."""

    minor: int
    patch: int = 0

    @classmethod
    def parse(cls, text: str, where: str = "release") -> Release:
        match = _RELEASE.fullmatch(text.strip())
        if not match or int(match[1]) < STABLE_MINOR_OFFSET:
            raise ManifestError(
                f"{where}: must be a Collector release v0.N.P with N >= {STABLE_MINOR_OFFSET}, got {text!r}"
            )
        return cls(int(match[1]), int(match[2]))

    @property
    def beta(self) -> str:
        return f"v0.{self.minor}.{self.patch}"

    @property
    def stable(self) -> str:
        return f"v1.{self.minor - STABLE_MINOR_OFFSET}.{self.patch}"

    def __str__(self) -> str:
        return self.beta


def read_release(path: Path = VERSION_FILE) -> Release:
    """The pinned Collector release, from collector/VERSION (one line, v0.N.P)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read the Collector release: {exc.strerror}") from exc
    return Release.parse(text, str(path))


@dataclass(frozen=True)
class GoMod:
    """One module line of the manifest: where it is (line, field) and what it names."""

    line: int
    field: str
    module: str
    version: str


def _scalar(node: yaml.Node, where: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise ManifestError(f"{where}: must be a string")
    return str(node.value)


def _mapping(node: yaml.Node) -> dict[str, tuple[yaml.Node, yaml.Node]]:
    return {str(key.value): (key, value) for key, value in node.value} if isinstance(node, yaml.MappingNode) else {}


def _gomod(node: yaml.Node, field: str) -> GoMod:
    text = _scalar(node, field)
    module, _, version = text.strip().partition(" ")
    return GoMod(node.start_mark.line + 1, field, module, version.strip())


def module_lines(text: str, name: str = "collector/builder-config.yaml") -> list[GoMod]:
    """Every gomod line of a manifest (and dist.otelcol_version, as a module named otelcol), with its line."""
    try:
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        raise ManifestError(f"{name}: not valid YAML: {exc}") from exc
    if not isinstance(root, yaml.MappingNode):
        raise ManifestError(f"{name}: must be a mapping of sections (dist, receivers, ...)")
    sections = _mapping(root)
    found: list[GoMod] = []
    dist = _mapping(sections["dist"][1]) if "dist" in sections else {}
    if "otelcol_version" in dist:
        node = dist["otelcol_version"][1]
        version = _scalar(node, f"{name}: dist.otelcol_version").strip()
        found.append(GoMod(node.start_mark.line + 1, "dist.otelcol_version", "otelcol", "v" + version.lstrip("v")))
    for section in MODULE_SECTIONS:
        if section not in sections:
            continue
        entries = sections[section][1]
        if not isinstance(entries, yaml.SequenceNode):
            raise ManifestError(f"{name}:{entries.start_mark.line + 1}: {section}: must be a list of {{gomod: ...}}")
        for index, entry in enumerate(entries.value):
            fields = _mapping(entry)
            if "gomod" in fields:
                found.append(_gomod(fields["gomod"][1], f"{section}[{index}].gomod"))
    telemetry = _mapping(sections["telemetry"][1]) if "telemetry" in sections else {}
    if "gomod" in telemetry:
        found.append(_gomod(telemetry["gomod"][1], "telemetry.gomod"))
    return found


def _problem(mod: GoMod, release: Release) -> str | None:
    """Why this module line disagrees with the release, or None when it agrees."""
    core = mod.module.startswith(CORE_PREFIX) or mod.module == "otelcol"
    if not core and not mod.module.startswith(CONTRIB_PREFIX):
        return None
    match = _VERSION.fullmatch(mod.version)
    if not match:
        return f"{mod.module} has no version v0.N.P or v1.M.P, got {mod.version or 'none'!r}"
    major, minor = int(match[1]), int(match[2])
    if core and major == 1:
        want, rule = release.stable, f"core stable modules are at v1.M, M = N - {STABLE_MINOR_OFFSET}"
    elif core:
        want, rule = release.beta, "core modules at v0 are at the release itself"
    else:
        if major == 0 and minor == release.minor:
            return None  # contrib's own patch releases go with the core release of the same v0.N
        want, rule = f"v0.{release.minor}.x", "contrib modules share the release's v0.N"
    if mod.version == want:
        return None
    return f"{mod.module} is at {mod.version}, but collector/VERSION {release} wants {want} ({rule})"


def check_manifest(text: str, release: Release, name: str = "collector/builder-config.yaml") -> list[str]:
    """Every disagreement between a manifest and the release, as `NAME:LINE: FIELD: reason`; empty when none."""
    problems = []
    for mod in module_lines(text, name):
        problem = _problem(mod, release)
        if problem:
            problems.append(f"{name}:{mod.line}: {mod.field}: {problem}")
    return problems


def main() -> int:
    try:
        release = read_release()
        problems = check_manifest(MANIFEST_FILE.read_text(encoding="utf-8"), release)
    except (ManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        print(f"{len(problems)} module line(s) disagree with collector/VERSION ({release})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
