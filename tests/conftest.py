"""Shared fixtures: the repository root, a CliRunner, and the real binaries end-to-end tests need.

A missing binary is a failure, never a skip: CI installs them (.ci/run), and a test that silently skips would
let a broken path land.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.otel_helpers import Pipeline
from tokenlat_cli.collector import CollectorError, find_collector
from tokenlat_cli.verify.processes import ServiceError
from tokenlat_cli.verify.services import find_prometheus
from tokenlat_cli.verify.thanos import find_thanos

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "tests" / "data"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def _require(find: Callable[[], Path]) -> Path:
    try:
        return find()
    except (CollectorError, ServiceError) as exc:
        pytest.fail(f"end-to-end prerequisite missing: {exc}")


@pytest.fixture(scope="session")
def collector_binary() -> Path:
    return _require(find_collector)


@pytest.fixture(scope="session")
def prometheus_binary() -> Path:
    return _require(find_prometheus)


@pytest.fixture(scope="session")
def thanos_binary() -> Path:
    return _require(find_thanos)


@pytest.fixture
def pipeline() -> Iterator[Pipeline]:
    """A private metrics pipeline with a fake clock, exporting through TokenlatMetricExporter."""
    p = Pipeline()
    yield p
    p.close()
