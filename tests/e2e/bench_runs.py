"""What the bench tests share: running a bench's main() while keeping the Result its run() computed."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest


def keep_results(bench_module: ModuleType, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Wrap ``bench_module.run`` for this test: every Result it returns is appended to the list returned here, so a
    test can drive the bench by its command line (main) and still judge the figures it computed."""
    results: list[Any] = []
    real_run = bench_module.run

    def keeping(*args: Any, **kwargs: Any) -> Any:
        results.append(real_run(*args, **kwargs))
        return results[-1]

    monkeypatch.setattr(bench_module, "run", keeping)
    return results
