"""`tokenlat render`: a profile in, a Collector configuration out."""

from __future__ import annotations

from pathlib import Path

import click

from tokenlat_cli.collector import CollectorError, validate_config
from tokenlat_cli.files import write_atomically
from tokenlat_cli.options import load_profile_or_exit, profile_option
from tokenlat_cli.render import render_collector_config


@click.command()
@profile_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the config here (atomically) instead of to standard output.",
)
@click.option(
    "--validate/--no-validate",
    default=False,
    help="Also check the result with `tokenlat-otelcol validate` (needs `make collector`).",
)
def render(profile_name: str, output: Path | None, validate: bool) -> None:
    """Render the Collector configuration of a profile."""
    profile = load_profile_or_exit(profile_name)
    text = render_collector_config(profile)
    if validate:
        try:
            validate_config(text)
        except CollectorError as exc:
            raise click.ClickException(f"rendered config for {profile.name} is invalid: {exc}") from None
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomically(output, text)
        click.echo(f"wrote {output} (profile {profile.name})", err=True)
