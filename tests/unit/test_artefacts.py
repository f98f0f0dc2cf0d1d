"""The artefacts `tokenlat render --what` writes (tokenlat_cli/artefacts.py): committed under deploy/ for every
built-in profile, and never drifting from a fresh render."""

from __future__ import annotations

from click.testing import CliRunner

from tests.conftest import REPO
from tokenlat_cli.artefacts import ARTEFACTS
from tokenlat_cli.configs import expected_artefacts
from tokenlat_cli.main import cli

DEPLOY = REPO / "deploy"


def test_committed_artefacts_have_not_drifted() -> None:
    expected = expected_artefacts()
    committed = {str(p.relative_to(DEPLOY)) for p in DEPLOY.glob("*/*")} if DEPLOY.exists() else set()
    assert committed == set(expected), "run `make configs` and commit deploy/"
    for path, text in expected.items():
        assert str(REPO) not in text, f"deploy/{path} names this checkout's path: renders must not depend on it"
        assert (DEPLOY / path).read_text(encoding="utf-8") == text, f"deploy/{path} drifted: run `make configs`"


def test_render_what_writes_each_artefact(runner: CliRunner) -> None:
    for name in ARTEFACTS:
        result = runner.invoke(cli, ["render", "--profile", "local", "--what", name])
        assert result.exit_code == 0, result.output
        assert result.stdout == (DEPLOY / "local" / ARTEFACTS[name].filename).read_text(encoding="utf-8")


def test_role_and_validate_apply_to_the_collector_config_only(runner: CliRunner) -> None:
    for name in ARTEFACTS:
        result = runner.invoke(cli, ["render", "--profile", "local", "--what", name, "--validate"])
        assert result.exit_code == 2 and "--what collector only" in result.output
    result = runner.invoke(cli, ["render", "--profile", "local", "--what", "nonsense"])
    assert result.exit_code == 2 and "--what" in result.output
