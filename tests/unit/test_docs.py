"""The reference docs name every metric, Prometheus name and attribute of the contract, and every sidecar option,
format, counter and error type."""

from __future__ import annotations

import dataclasses

from click.testing import CliRunner

from tests.conftest import REPO
from tokenlat import recorder, semconv, sidecar
from tokenlat.parsers import FORMATS
from tokenlat.sidecar.models import OTHER_MODELS
from tokenlat_cli.commands.sidecar import sidecar as sidecar_command
from tokenlat_cli.main import cli


def test_metrics_doc_covers_the_contract() -> None:
    doc = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    for spec in semconv.ALL_METRICS:
        assert f"`{spec.name}`" in doc, spec.name
        assert f"`{semconv.prometheus_name(spec)}`" in doc, semconv.prometheus_name(spec)
    for key in semconv.METRIC_ATTRIBUTES:
        assert f"`{key}`" in doc, key
    for key in (semconv.USER_ID_HASH, semconv.REQUEST_ID):
        assert f"`{key}`" in doc, key
    own_counters = (
        recorder.DROPPED_ATTRIBUTES,
        recorder.TRUNCATED_ATTRIBUTES,
        sidecar.UNRECOGNISED_STREAMS,
        OTHER_MODELS,
    )
    for counter in own_counters:
        assert f"`{counter}`" in doc, counter
        assert f"`{counter.replace('.', '_')}_total`" in doc, counter


def test_every_cli_command_has_help() -> None:
    runner = CliRunner()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, command in cli.commands.items():
        assert command.help, f"`tokenlat {name}` has no help text"
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name
        assert f"tokenlat {name}" in readme, f"README does not document `tokenlat {name}`"


def test_sidecar_doc_covers_its_options_formats_counters_and_errors() -> None:
    doc = (REPO / "docs" / "sidecar.md").read_text(encoding="utf-8")
    for param in sidecar_command.params:
        for option in param.opts:
            if option.startswith("--") and option != "--help":
                assert f"`{option}" in doc, option
    for fmt in FORMATS:
        assert f"| `{fmt}` |" in doc, fmt
    for field in dataclasses.fields(sidecar.SidecarStats):
        assert f"| `{field.name}` |" in doc, field.name
    for error in (sidecar.UPSTREAM_UNAVAILABLE, sidecar.UPSTREAM_RESET, sidecar.UPSTREAM_ERROR, "cancelled"):
        assert f"`{error}`" in doc, error
    for path in (sidecar.HEALTH_PATH, sidecar.STATS_PATH):
        assert f"GET {path}" in doc, path
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert "docs/sidecar.md" in readme
