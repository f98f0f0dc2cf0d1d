"""Finding the programs tokenlat runs (the Collector, Prometheus, VictoriaMetrics, Thanos): one rule for all.

An explicit environment variable wins (and must name an executable); then the places tokenlat itself builds or
installs to (the programs built from Go module source go to one cache, ``cached_build_path``); then PATH. A
missing program is an error that says how to get it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def cached_build_path(name: str, version: str) -> Path:
    """Where scripts/build-go-binary.sh puts ``name`` at ``version``: the user's cache, outside the repository."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "tokenlat" / f"{name}-{version}" / name


def find_binary(
    name: str,
    env_var: str,
    how_to_get: str,
    error: type[Exception],
    candidates: Sequence[Path] = (),
    *,
    search_path: bool = True,
) -> Path:
    """``$env_var``, else the first executable of ``candidates``, else ``name`` on PATH (unless not
    ``search_path``: a specific build that a same-named program on PATH must not stand in for); else ``error``."""
    configured = os.environ.get(env_var)
    if configured:
        if not _executable(Path(configured)):
            raise error(f"{env_var}={configured} is not an executable file")
        return Path(configured)
    for candidate in candidates:
        if _executable(candidate):
            return candidate
    on_path = shutil.which(name) if search_path else None
    if on_path:
        return Path(on_path)
    raise error(f"{name} not found: {how_to_get} (or set {env_var} to its path)")
