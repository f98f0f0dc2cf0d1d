"""The KEDA CRDs vendored in tokenlat_cli/operate/crds/ are the pinned release's, byte for byte: the module zip
comes from the Go module proxy (checked against its go.sum hash), into the Go module cache, where later runs find
it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tokenlat_cli.operate.schemas import CRD_DIR, CRDS, KEDA_MODULE, KEDA_MODULE_SUM, KEDA_VERSION


def test_vendored_crds_are_the_pinned_module_files(tmp_path: Path) -> None:
    go = shutil.which("go")
    if go is None:
        pytest.fail("end-to-end prerequisite missing: go (the KEDA module comes from the Go module proxy)")
    # A throwaway module, so that `go mod download` resolves the pinned version whatever directory this runs in.
    (tmp_path / "go.mod").write_text("module tokenlat.test/keda\n\ngo 1.22\n", encoding="utf-8")
    result = subprocess.run(
        [go, "mod", "download", "-json", f"{KEDA_MODULE}@{KEDA_VERSION}"],
        cwd=tmp_path,
        env={**os.environ, "GOFLAGS": "-mod=mod"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    module = json.loads(result.stdout)
    assert module["Sum"] == KEDA_MODULE_SUM, f"{KEDA_MODULE}@{KEDA_VERSION} is not the module pinned"
    for crd in CRDS.values():
        upstream = Path(module["Dir"]) / "config" / "crd" / "bases" / crd.filename
        assert (CRD_DIR / crd.filename).read_bytes() == upstream.read_bytes(), f"{crd.filename} differs from upstream"
