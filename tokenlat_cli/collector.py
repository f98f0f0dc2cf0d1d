"""The built Collector distribution: finding the binary and asking it about configs."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from tokenlat_cli.binaries import find_binary
from tokenlat_cli.render import env_vars_referenced

BINARY_NAME = "tokenlat-otelcol"
BINARY_ENV = "TOKENLAT_OTELCOL_BIN"
# What a referenced but unset variable holds during validation: URL-shaped, as endpoints must be.
VALIDATE_PLACEHOLDER = "https://validate.placeholder.invalid/tokenlat"
# Where `make collector` builds it, in a source checkout.
_SOURCE_BUILD = Path(__file__).resolve().parents[1] / "collector" / "_build" / BINARY_NAME


class CollectorError(RuntimeError):
    """The Collector binary is missing or refused something."""


def find_collector() -> Path:
    """$TOKENLAT_OTELCOL_BIN, else the source checkout's build, else tokenlat-otelcol on PATH."""
    return find_binary(BINARY_NAME, BINARY_ENV, "run `make collector` to build it", CollectorError, [_SOURCE_BUILD])


def validate_config(text: str) -> None:
    """Run `tokenlat-otelcol validate` on a config; raise CollectorError with its output when it refuses.

    Variables the config references but this environment lacks get a placeholder: validation checks the
    structure, and a deployment's secrets are not here (nor should they be).
    """
    binary = find_collector()
    env = dict(os.environ)
    for var in env_vars_referenced(text):
        env.setdefault(var, VALIDATE_PLACEHOLDER)
    with tempfile.TemporaryDirectory(prefix="tokenlat-validate-") as tmp:
        config = Path(tmp) / "config.yaml"
        config.write_text(text, encoding="utf-8")
        result = subprocess.run(
            [str(binary), "validate", f"--config={config}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )
    if result.returncode != 0:
        raise CollectorError((result.stderr or result.stdout).strip())
