"""The Collector's cardinality guard against a service that does not bound its labels, and verify's check of it:
passes with the rendered guard, fails (for the reason it names) with each half of the guard taken out."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tokenlat_cli.profiles import load_profile
from tokenlat_cli.render import render_collector_config
from tokenlat_cli.verify.backends import start_backend
from tokenlat_cli.verify.cardinality import DISTINCT, cardinality_checks
from tokenlat_cli.verify.certs import make_certificates
from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.runner import local_deployment
from tokenlat_cli.verify.services import CollectorEndpoints, start_collector

Config = dict[str, Any]


def _as_rendered(config: Config) -> None:
    pass


def _without_values_guard(config: Config) -> None:
    datapoint = config["processors"]["transform/metric_allowlist"]["metric_statements"][0]["statements"]
    datapoint[:] = [s for s in datapoint if not s.startswith("set(")]


def _dropping_keys_without_merging(config: Config) -> None:
    # What the guard was before it merged: keep_keys leaves points that differ only in a dropped key identical.
    groups = config["processors"]["transform/metric_allowlist"]["metric_statements"]
    keys = groups[1]["statements"][0].split("[", 1)[1].rstrip(")")
    groups[0]["statements"].append(f"keep_keys(datapoint.attributes, [{keys})")
    del groups[1]


@pytest.mark.parametrize(
    ("change", "passes", "failing"),
    [
        (_as_rendered, True, set()),
        (_without_values_guard, False, {"series in Prometheus", "requests counted in the merged series"}),
        (_dropping_keys_without_merging, False, {"requests counted in the merged series"}),
    ],
    ids=["rendered", "without-values-guard", "without-merge"],
)
def test_distinct_ids_and_model_names_do_not_grow_the_series(
    collector_binary: Path,
    prometheus3_binary: Path,
    tmp_path: Path,
    change: Callable[[Config], None],
    passes: bool,
    failing: set[str],
) -> None:
    profile = load_profile("local")  # lists its model names in metrics.values
    assert profile.data["metrics"]["values"], "the local profile must guard its model names for this test"
    with ProcessGroup() as group:
        certs = make_certificates(tmp_path / "certs")
        backend = start_backend(group, tmp_path, profile.data, certs)
        endpoints = CollectorEndpoints.pick()
        deployment = local_deployment(profile, backend, endpoints, certs, tmp_path)
        config = yaml.safe_load(render_collector_config(deployment.profile))
        change(config)
        salt_env = profile.data["deidentification"]["salt_env"]
        start_collector(group, tmp_path, yaml.safe_dump(config), endpoints, env={salt_env: "salt"})
        # A failing run waits out its deadline: 15 s is ample for one export on this machine.
        rows = cardinality_checks(
            deployment.otlp_endpoint, None, backend.query, profile.data["metrics"]["values"], 30.0 if passes else 15.0
        )
    failed = {row.name.split(": ", 1)[1] for row in rows if not row.passed}
    assert all(row.name.startswith(f"{DISTINCT:,} distinct user ids") for row in rows)
    if passes:
        assert not failed, rows
        assert [row.observed for row in rows] == [3, DISTINCT, "as expected"]
    else:
        assert failing | {"every series as expected"} == failed, rows
