"""Finding the programs tokenlat runs (the Collector, Prometheus, VictoriaMetrics, Thanos): one rule for all.

An explicit environment variable wins (and must name an executable); then the places tokenlat itself builds or
installs to; then PATH. A missing program is an error that says how to get it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_binary(
    name: str, env_var: str, how_to_get: str, error: type[Exception], candidates: Sequence[Path] = ()
) -> Path:
    """``$env_var``, else the first executable of ``candidates``, else ``name`` on PATH; else ``error``."""
    configured = os.environ.get(env_var)
    if configured:
        if not _executable(Path(configured)):
            raise error(f"{env_var}={configured} is not an executable file")
        return Path(configured)
    for candidate in candidates:
        if _executable(candidate):
            return candidate
    on_path = shutil.which(name)
    if on_path:
        return Path(on_path)
    raise error(f"{name} not found: {how_to_get} (or set {env_var} to its path)")
