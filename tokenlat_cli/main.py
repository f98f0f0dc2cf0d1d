"""The `tokenlat` command: one module per subcommand under tokenlat_cli.commands."""

from __future__ import annotations

import click

from tokenlat_cli.commands.profiles import profiles
from tokenlat_cli.commands.render import render
from tokenlat_cli.commands.sidecar import sidecar
from tokenlat_cli.commands.verify import verify


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="tokenlat")
def cli() -> None:
    """Token-level latency of LLM inference: render Collector configs, verify the path end to end."""


cli.add_command(render)
cli.add_command(verify)
cli.add_command(profiles)
cli.add_command(sidecar)
