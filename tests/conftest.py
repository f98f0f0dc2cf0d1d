"""Shared fixtures (the repository root, a CliRunner, a private metrics pipeline), and the one rule that tells unit
from end-to-end tests: every test under tests/e2e/ is marked ``e2e``, and only those may need a built or installed
program (their fixtures live in tests/e2e/conftest.py). ``pytest -m "not e2e"`` runs on a machine with Python only."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.otel_helpers import Pipeline

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"
E2E = REPO / "tests" / "e2e"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if E2E in item.path.parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    """A private metrics pipeline with a fake clock, exporting through TokenlatMetricExporter."""
    p = Pipeline()
    yield p
    p.close()
