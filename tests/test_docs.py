"""The reference docs name every metric, Prometheus name and attribute of the contract."""

from __future__ import annotations

from click.testing import CliRunner

from tests.conftest import REPO
from tokenlat import semconv
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


def test_every_cli_command_has_help() -> None:
    runner = CliRunner()
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    for name, command in cli.commands.items():
        assert command.help, f"`tokenlat {name}` has no help text"
        result = runner.invoke(cli, [name, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, name
        assert f"tokenlat {name}" in readme, f"README does not document `tokenlat {name}`"
