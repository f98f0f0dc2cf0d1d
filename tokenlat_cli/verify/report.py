"""The verify report: a table a person reads, and the same content as JSON for CI."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from tokenlat_cli.verify.checks import Check


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if math.isinf(value):
            return "inf"
        if value == int(value) and abs(value) >= 1:
            return f"{int(value)}"
        return f"{value:.4g}"
    return str(value)


@dataclass(frozen=True)
class LatencyDistribution:
    """One latency metric of a run, for pictures: the true values and the quantiles the backend answered."""

    metric: str  # the Prometheus name
    histograms: str  # "native" or "classic"
    truth: list[float]  # sorted
    answered: dict[float, float | None]  # quantile -> what the backend answered (None: no data)

    def to_dict(self) -> dict[str, object]:
        return {
            "metric": self.metric,
            "histograms": self.histograms,
            "truth": self.truth,
            "answered": {f"{q:g}": _json_number(v) for q, v in self.answered.items()},
        }


@dataclass
class Report:
    profile: str
    settings: dict[str, Any]
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    distributions: list[LatencyDistribution] = field(default_factory=list)
    #: Figures a run measured beyond its checks, for CI to keep (the scale-out run's faults: times, counts); JSON only.
    measurements: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return bool(self.checks) and all(c.passed for c in self.checks)

    def to_json(self) -> str:
        payload = {
            "profile": self.profile,
            "passed": self.passed,
            "settings": self.settings,
            "checks": [{k: _json_number(v) for k, v in c.to_dict().items()} for c in self.checks],
            "notes": self.notes,
        }
        if self.measurements:
            payload["measurements"] = _json_clean(self.measurements)
        return json.dumps(payload, indent=2, allow_nan=False) + "\n"

    def table(self) -> str:
        header = ("check", "expected", "observed", "error", "tolerance", "result", "detail")
        rows = [
            (c.name, _cell(c.expected), _cell(c.observed), _cell(c.error), _cell(c.tolerance), _result(c), c.detail)
            for c in self.checks
        ]
        return _format_table(header, rows) + "\n" + self._summary()

    def _summary(self) -> str:
        failed = sum(1 for c in self.checks if not c.passed)
        verdict = "PASSED" if self.passed else "FAILED"
        lines = [
            *self.notes,
            f"verify {verdict}: {len(self.checks) - failed} of {len(self.checks)} checks passed",
        ]
        return "\n".join(lines)


def _json_number(value: object) -> object:
    """JSON has no inf or nan: those become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def _json_clean(value: object) -> object:
    """``value`` with every non-finite float in it, however deep, made a string."""
    if isinstance(value, dict):
        return {str(k): _json_clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_clean(v) for v in value]
    return _json_number(value)


def _result(check: Check) -> str:
    return "PASS" if check.passed else "FAIL"


def _format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
