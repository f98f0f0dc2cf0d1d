"""The `tokenlat` command: one module per subcommand under tokenlat_cli.commands, imported only when it runs.

Importing a command only when it is invoked keeps each one to its own extra (``tokenlat sidecar`` needs
``tokenlat[sidecar]``, the others ``tokenlat[cli]``), and keeps one command's process settings out of another's
(verify quiets gRPC's C core; the sidecar must not inherit that).
"""

from __future__ import annotations

import importlib

import click

from tokenlat.extras import MissingExtra, require
from tokenlat_cli.commands import COMMANDS


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = COMMANDS.get(cmd_name)
        if command is None:
            return None
        try:
            require(command.extra, f"tokenlat {cmd_name}")
        except MissingExtra as exc:
            raise click.ClickException(str(exc)) from None
        found: click.Command = getattr(importlib.import_module(command.module(cmd_name)), command.attribute(cmd_name))
        return found

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.summary) for name, command in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenlat")
def cli() -> None:
    """Token-level latency of LLM inference: render Collector configs, verify the path end to end."""
