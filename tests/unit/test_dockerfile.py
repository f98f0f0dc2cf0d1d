"""collector/Dockerfile cannot drift from `make collector`: the ocb release read from collector/VERSION, the same
manifest, the same link flags, a Go at least the README's, and the binary and config where the renders put them.
(hadolint lints it in tests/e2e/test_deploy_tools.py; no Docker engine runs here to build it.)"""

from __future__ import annotations

import re

from tests.conftest import REPO
from tokenlat_cli.manifest import MANIFEST_FILE, VERSION_FILE
from tokenlat_cli.operate import kubernetes, runtime

DOCKERFILE = REPO / "collector" / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments), comments dropped (the file uses no line continuations)."""
    lines = [line.strip() for line in DOCKERFILE.read_text(encoding="utf-8").splitlines()]
    return [(line.split(None, 1)[0].upper(), line.split(None, 1)[1]) for line in lines if line and line[0] != "#"]


def _arg(name: str) -> str:
    values = [args.split("=", 1)[1] for op, args in _instructions() if op == "ARG" and args.startswith(f"{name}=")]
    assert len(values) == 1, f"one ARG {name}=... with a default"
    return values[0]


def test_ocb_is_installed_at_collector_version_read_from_the_file() -> None:
    """The release is written in collector/VERSION only (test_collector_versions.py): the image reads it there."""
    assert VERSION_FILE.read_text(encoding="utf-8").strip() not in DOCKERFILE.read_text(encoding="utf-8")
    runs = [args for op, args in _instructions() if op == "RUN"]
    assert "go install \"go.opentelemetry.io/collector/cmd/builder@$(tr -d '[:space:]' < VERSION)\"" in runs
    assert not [args for op, args in _instructions() if op == "ARG" and "OCB" in args]


def test_go_meets_the_readme() -> None:
    wanted = re.search(r"Go \((\d+)\.(\d+)\+\)", (REPO / "README.md").read_text(encoding="utf-8"))
    assert wanted, "README states the Go it needs as 'Go (X.Y+)'"
    go = tuple(int(part) for part in _arg("GO_VERSION").split(".")[:2])
    assert go >= (int(wanted[1]), int(wanted[2]))
    assert any(op == "FROM" and args.startswith("golang:${GO_VERSION}") for op, args in _instructions())


def test_builds_the_manifest_make_collector_builds_with_its_flags() -> None:
    copies = [args for op, args in _instructions() if op == "COPY" and "--from" not in args]
    files = [str(f.relative_to(REPO)) for f in (VERSION_FILE, MANIFEST_FILE)]
    assert copies == [f"{' '.join(files)} ./"], "the release and the manifest, and nothing else from the checkout"
    assert MANIFEST_FILE.name == "builder-config.yaml" and VERSION_FILE.name == "VERSION"
    ldflags = re.search(r'^ldflags="(.*)"$', (REPO / "collector" / "build.sh").read_text(), re.M)
    assert ldflags
    runs = [args for op, args in _instructions() if op == "RUN"]
    assert f'builder --config builder-config.yaml --ldflags="{ldflags[1]}"' in runs


def test_runtime_stage_is_static_non_root_and_matches_the_renders() -> None:
    instructions = _instructions()
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    runtime_stage = instructions[last_from:]
    assert runtime_stage[0][1].startswith("gcr.io/distroless/static")
    user = next(args for op, args in runtime_stage if op == "USER")
    assert user.split(":")[0] not in ("0", "root") and user.split(":")[0] == str(kubernetes.NONROOT)
    entrypoint = next(args for op, args in runtime_stage if op == "ENTRYPOINT")
    assert entrypoint == f'["{runtime.BINARY}"]'
    cmd = next(args for op, args in runtime_stage if op == "CMD")
    assert cmd == f'["--config={kubernetes.CONFIG_DIR}/config.yaml"]'
