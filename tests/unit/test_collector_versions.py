"""The Collector release is pinned once (collector/VERSION) and the ocb manifest agrees with it: checked here
without Go or a build, from the files alone."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO
from tokenlat_cli.configs import expected_configs
from tokenlat_cli.manifest import (
    MANIFEST_FILE,
    VERSION_FILE,
    ManifestError,
    Release,
    check_manifest,
    main,
    module_lines,
    read_release,
)

MANIFEST = MANIFEST_FILE.read_text(encoding="utf-8")
RELEASE = read_release()
PROVIDER = "go.opentelemetry.io/collector/confmap/provider/"
# Where the release may be written out: its one place, and the manifest's gomod lines, which ocb needs literally
# and the checker holds to it.
ALLOWED = {VERSION_FILE, MANIFEST_FILE}
# Generated, installed or built: not the project's text (where git cannot tell).
SKIPPED_DIRS = {
    ".git",
    ".venv",
    "_build",
    "build",
    "dist",
    "__pycache__",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
}


def wrong(old: str, new: str) -> str:
    """The manifest with one line's version changed: `old` must name exactly one line."""
    assert MANIFEST.count(old) == 1, old
    return MANIFEST.replace(old, new)


def test_release_file_is_one_release() -> None:
    assert VERSION_FILE.read_text(encoding="utf-8").strip() == RELEASE.beta


@pytest.mark.parametrize(
    ("beta", "stable"),
    # The core's pairs as released: the Go module proxy serves otelcol v0.158.0-v0.165.0 beside pdata
    # v1.64.0-v1.71.0 and pairs v0.165.0 with v1.71.0; pdata v1.0.0 came with v0.94.0. (The pinned release's own
    # pair is ocb's default providers' version at that release: the manifest lists them and is held to it below.)
    [("v0.165.0", "v1.71.0"), ("v0.158.0", "v1.64.0"), ("v0.94.0", "v1.0.0")],
)
def test_core_pairs_each_release_with_its_stable_twin(beta: str, stable: str) -> None:
    assert Release.parse(beta).stable == stable


@pytest.mark.parametrize("text", ["0.165.0", "v1.71.0", "v0.165", "v0.93.0", "latest", ""])
def test_a_release_that_is_not_v0_n_p_is_refused(text: str) -> None:
    with pytest.raises(ManifestError, match="collector/VERSION: must be a Collector release"):
        Release.parse(text, "collector/VERSION")


def test_manifest_agrees_with_the_release() -> None:
    assert check_manifest(MANIFEST, RELEASE) == []


def test_checker_reads_every_module_line_of_the_manifest() -> None:
    gomod_lines = [n for n, line in enumerate(MANIFEST.splitlines(), 1) if line.lstrip().startswith("- gomod:")]
    assert [mod.line for mod in module_lines(MANIFEST)] == gomod_lines
    sections = {mod.field.split("[")[0] for mod in module_lines(MANIFEST)}
    assert {"receivers", "processors", "exporters", "extensions", "providers"} <= sections


@pytest.mark.parametrize(
    ("old", "new", "want"),
    [
        # a core module of an older release
        (f"otlpexporter {RELEASE.beta}", f"otlpexporter v0.{RELEASE.minor - 1}.0", RELEASE.beta),
        # a contrib module of a newer release
        (
            f"tailsamplingprocessor {RELEASE.beta}",
            f"tailsamplingprocessor v0.{RELEASE.minor + 1}.1",
            f"v0.{RELEASE.minor}.x",
        ),
        # a stable core module paired with another release
        (
            f"httpsprovider {RELEASE.stable}",
            f"httpsprovider {Release(RELEASE.minor - 1).stable}",
            RELEASE.stable,
        ),
        # a module without a version
        (f"filestorage {RELEASE.beta}", "filestorage", "no version"),
    ],
)
def test_a_wrong_manifest_fails_naming_the_line_and_both_versions(old: str, new: str, want: str) -> None:
    text = wrong(old, new)
    field = next(mod.field for mod in module_lines(MANIFEST) if mod.module.endswith("/" + old.split()[0]))
    line = next(n for n, content in enumerate(text.splitlines(), 1) if content.endswith(new))
    problems = check_manifest(text, RELEASE, "bad.yaml")
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"bad.yaml:{line}: {field}: "), problems[0]
    assert want in problems[0], problems[0]
    version = new.partition(" ")[2]
    if version:
        assert f"is at {version}, but collector/VERSION {RELEASE} wants {want}" in problems[0]


def test_contrib_patch_releases_go_with_the_core_release_of_the_same_minor() -> None:
    text = wrong(
        f"tailsamplingprocessor {RELEASE.beta}", f"tailsamplingprocessor v0.{RELEASE.minor}.{RELEASE.patch + 1}"
    )
    assert check_manifest(text, RELEASE) == []


def test_every_line_is_held_to_another_release() -> None:
    # Bumping collector/VERSION alone must flag every core and contrib line, and no other.
    problems = check_manifest(MANIFEST, Release(RELEASE.minor + 1))
    assert len(problems) == len(module_lines(MANIFEST))


def test_dist_otelcol_version_is_checked_when_present() -> None:
    older = f"0.{RELEASE.minor - 1}.0"
    text = MANIFEST.replace("  output_path: ./_build\n", f"  output_path: ./_build\n  otelcol_version: {older}\n")
    problems = check_manifest(text, RELEASE)
    assert len(problems) == 1 and f"dist.otelcol_version: otelcol is at v{older}" in problems[0], problems


def test_a_malformed_manifest_is_refused() -> None:
    with pytest.raises(ManifestError, match=r"bad.yaml:\d+: providers: must be a list"):
        check_manifest("providers: envprovider\n", RELEASE, "bad.yaml")


def test_providers_are_listed_and_cover_what_the_configs_use() -> None:
    listed = {mod.module.removeprefix(PROVIDER).removesuffix("provider") for mod in module_lines(MANIFEST)}
    # env: ${env:...} in the rendered configs; file: --config=PATH; yaml: --set.
    assert {"env", "file", "yaml"} <= listed
    used = {scheme for text in expected_configs().values() for scheme in re.findall(r"\$\{(\w+):", text)}
    assert used and used <= listed, f"configs use providers the manifest lacks: {sorted(used - listed)}"


def project_files() -> list[Path]:
    """What git would commit (tracked, or new and not ignored); without git, the checkout less what is built."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO,
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        files = []
        for root, dirs, names in os.walk(REPO):
            dirs[:] = [d for d in dirs if d not in SKIPPED_DIRS and not d.endswith(".egg-info")]
            files += [Path(root) / name for name in names]
        return files
    return [REPO / name for name in listed.decode().split("\0") if name]


def test_the_release_is_written_nowhere_else() -> None:
    pattern = re.compile(rf"\bv?(?:{re.escape(RELEASE.beta[1:])}|{re.escape(RELEASE.stable[1:])})\b")
    found = []
    for path in project_files():
        if path in ALLOWED:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # binary, or deleted in the work tree: not where a version is written by hand
        found += [
            f"{path.relative_to(REPO)}:{n}" for n, line in enumerate(text.splitlines(), 1) if pattern.search(line)
        ]
    assert not found, f"the Collector release is pinned in collector/VERSION only; read it from there: {found}"
    # In the manifest, only gomod lines may carry it: the comments refer to collector/VERSION.
    comments = [n for n, line in enumerate(MANIFEST.splitlines(), 1) if "#" in line and pattern.search(line)]
    assert not comments, f"collector/builder-config.yaml comments repeat the release on lines {comments}"


def test_makefile_reads_the_release_from_its_one_place() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "OCB_VERSION := $(shell cat collector/VERSION)" in makefile


def test_the_build_check_passes_on_the_checkout(capsys: pytest.CaptureFixture[str]) -> None:
    # What collector/build.sh runs before building: silent and 0 when the manifest agrees.
    assert main() == 0
    assert capsys.readouterr().err == ""
