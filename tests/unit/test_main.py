"""The `tokenlat` command group: commands load only when they run, and the listing stays true to them."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from tokenlat import extras
from tokenlat_cli.commands import COMMANDS
from tokenlat_cli.main import cli


@pytest.mark.parametrize("name", list(COMMANDS))
def test_the_listing_says_what_each_command_says_of_itself(name: str) -> None:
    module = importlib.import_module(COMMANDS[name].module(name))
    command: click.Command = getattr(module, COMMANDS[name].attribute(name))
    assert COMMANDS[name].summary == command.get_short_help_str(limit=200)
    assert COMMANDS[name].extra in extras.EXTRAS


def test_help_imports_no_command() -> None:
    code = "import sys; from tokenlat_cli.main import cli; " + (
        "from click.testing import CliRunner; r = CliRunner().invoke(cli, ['--help']); assert r.exit_code == 0; "
        "print(sorted(m for m in sys.modules if m.startswith('tokenlat_cli.commands.')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout


def test_a_missing_extra_is_one_line_naming_it(runner: CliRunner, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(extras.EXTRAS, "sidecar", ("tokenlat_no_such_module",))
    result = runner.invoke(cli, ["sidecar", "--help"])
    assert result.exit_code == 1
    assert result.output == (
        "Error: tokenlat sidecar needs the tokenlat[sidecar] extra (tokenlat_no_such_module not installed): "
        "pip install 'tokenlat[sidecar]'\n"
    )


def test_verify_quiets_grpc_only_when_it_runs() -> None:
    code = "import os, tokenlat_cli.main, tokenlat_cli.commands.verify; print(os.environ.get('GRPC_VERBOSITY'))"
    env = {k: v for k, v in __import__("os").environ.items() if k != "GRPC_VERBOSITY"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert result.stdout.strip() == "None"
