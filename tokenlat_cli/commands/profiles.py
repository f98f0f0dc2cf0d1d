"""`tokenlat profiles`: list the built-in profiles."""

from __future__ import annotations

import click

from tokenlat_cli.profiles import builtin_names, load_profile


@click.command()
def profiles() -> None:
    """List the built-in profiles with their descriptions."""
    for name in builtin_names():
        click.echo(f"{name:<12} {load_profile(name).data['description']}")
