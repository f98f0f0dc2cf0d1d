"""`tokenlat render`: a profile in, a Collector configuration out."""

from __future__ import annotations

from pathlib import Path

import click

from tokenlat_cli.collector import CollectorError, validate_config
from tokenlat_cli.files import write_atomically
from tokenlat_cli.options import load_profile_or_exit, profile_option
from tokenlat_cli.render import ROLES, RenderError, render_collector_config, series_estimate


@click.command()
@profile_option
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the config here (atomically) instead of to standard output.",
)
@click.option(
    "--role",
    type=click.Choice(list(ROLES)),
    default="standalone",
    show_default=True,
    help="standalone: one Collector; agent/gateway: the two-tier layout (agents route traces by trace id to the "
    "gateways, which tail-sample).",
)
@click.option(
    "--validate/--no-validate",
    default=False,
    help="Also check the result with `tokenlat-otelcol validate` (needs `make collector`).",
)
def render(profile_name: str, output: Path | None, role: str, validate: bool) -> None:
    """Render the Collector configuration of a profile.

    Also reports, on standard error, how many active series the profile's allowlist can produce (from the
    label-value counts declared in metrics.cardinality), so the cardinality is known before deploying.
    """
    profile = load_profile_or_exit(profile_name)
    try:
        text = render_collector_config(profile, role)
    except RenderError as exc:
        raise click.UsageError(str(exc)) from None
    if validate:
        try:
            validate_config(text)
        except CollectorError as exc:
            raise click.ClickException(f"rendered config for {profile.name} is invalid: {exc}") from None
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomically(output, text)
        click.echo(f"wrote {output} (profile {profile.name}, role {role})", err=True)
    if role != "gateway":
        series, undeclared = series_estimate(profile)
        note = f"; no count declared for {', '.join(undeclared)} (taken as 1)" if undeclared else ""
        click.echo(f"active series: at most {series:,} from the metric allowlist{note}", err=True)
