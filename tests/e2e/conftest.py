"""The real programs end-to-end tests need: the built Collector, the pinned Prometheus 3, Debian's Prometheus 2.42,
Thanos.

A missing program is a failure, never a skip: CI installs them (.ci/run), and a test that silently skips would let
a broken path land.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tokenlat_cli.collector import CollectorError, find_collector
from tokenlat_cli.verify.processes import ServiceError
from tokenlat_cli.verify.prometheus import PROMETHEUS_ENV, Prometheus, find_prometheus, find_prometheus3
from tokenlat_cli.verify.thanos import find_thanos


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
    """The Prometheus verify starts by default. Unless $PROMETHEUS_BIN picks one, that must be the pinned Prometheus
    3 (`make prometheus3`): verify would otherwise fall back to Debian's 2.42 without a word, and the end-to-end
    tests would run against one version twice."""
    if not os.environ.get(PROMETHEUS_ENV):
        _require(find_prometheus3)
    return _require(find_prometheus)


@pytest.fixture(scope="session")
def prometheus3_binary() -> Path:
    """The pinned Prometheus 3 (`make prometheus3`, or $TOKENLAT_PROMETHEUS3_BIN)."""
    return _require(find_prometheus3)


def _find_debian_prometheus() -> Path:
    found = shutil.which("prometheus")
    if found is None:
        raise ServiceError("prometheus is not on PATH: `apt-get install prometheus`, or `make prometheus`")
    if Prometheus.probe(Path(found)).version_info[0] != 2:
        raise ServiceError(f"{found} is not Prometheus 2 (Debian's 2.42)")
    return Path(found)


@pytest.fixture(scope="session")
def debian_prometheus_binary() -> Path:
    """Debian's Prometheus 2.42 (prometheus on PATH): the version verify does not start by default, which the
    end-to-end tests also run against, through $PROMETHEUS_BIN."""
    return _require(_find_debian_prometheus)


@pytest.fixture(scope="session")
def thanos_binary() -> Path:
    return _require(find_thanos)
