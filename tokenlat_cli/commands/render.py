"""`tokenlat render`: a profile in, a Collector configuration out."""

from __future__ import annotations

from pathlib import Path

import click

from tokenlat import semconv
from tokenlat.extras import MissingExtra
from tokenlat_cli.artefacts import ARTEFACTS, render_artefact
from tokenlat_cli.collector import CollectorError, validate_config
from tokenlat_cli.files import write_atomically
from tokenlat_cli.options import load_profile_or_exit, profile_option
from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import ROLES, RenderError, render_collector_config, series_estimate


@click.command()
@profile_option
@click.option(
    "--what",
    type=click.Choice(["collector", *ARTEFACTS]),
    default="collector",
    show_default=True,
    help="What to render: the Collector config, or "
    + (", ".join(f"{a.name} ({a.summary})" for a in ARTEFACTS.values()) or "nothing else yet")
    + ".",
)
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
    help="standalone: one Collector; agent/gateway: the two-tier layout (agents route metrics by resource and "
    "traces by trace id to tiers.gateways, which guard, export and tail-sample).",
)
@click.option(
    "--validate/--no-validate",
    default=False,
    help="Also check the result with `tokenlat-otelcol validate` (needs `make collector`).",
)
def render(profile_name: str, what: str, output: Path | None, role: str, validate: bool) -> None:
    """Render the Collector configuration of a profile, or (--what) what operates on its data.

    With the Collector config, also reports on standard error how many active series the profile's allowlist can
    produce (from the label-value counts declared in metrics.cardinality), so the cardinality is known before
    deploying.
    """
    profile = load_profile_or_exit(profile_name)
    if what != "collector":
        if role != "standalone" or validate:
            raise click.UsageError("--role and --validate apply to --what collector only")
        try:
            text = render_artefact(what, profile)
        except MissingExtra as exc:  # an artefact's own package (the dashboard SDK): one line, not a traceback
            raise click.ClickException(str(exc)) from None
        except RenderError as exc:
            raise click.UsageError(str(exc)) from None
        _emit(text, output, f"{what} of profile {profile.name}")
        return
    try:
        text = render_collector_config(profile, role)
    except RenderError as exc:
        raise click.UsageError(str(exc)) from None
    if validate:
        try:
            validate_config(text)
        except CollectorError as exc:
            raise click.ClickException(f"rendered config for {profile.name} is invalid: {exc}") from None
    _emit(text, output, f"profile {profile.name}, role {role}")
    if role != "gateway":
        _report_cost(profile)


def _emit(text: str, output: Path | None, what: str) -> None:
    if output is None:
        click.echo(text, nl=False)
    else:
        write_atomically(output, text)
        click.echo(f"wrote {output} ({what})", err=True)


def _report_cost(profile: Profile) -> None:
    """What the histograms cost, next to what they promise: buckets and series per metric, and the total."""
    estimate = series_estimate(profile)
    metrics = profile.data["metrics"]
    if profile.native:
        click.echo("histograms: native (exponential, scale 6: quantiles within 1.1% of the truth)", err=True)
    else:
        target = profile.layout.target
        promise = f"quantiles within {target:.0%} of the truth in range" if target else "no accuracy promised"
        nhcb = ", sent as native histograms with custom buckets" if metrics["native_custom_buckets"] else ""
        click.echo(f"histograms: classic, buckets {metrics['buckets']} ({promise}){nhcb}", err=True)
    for spec in semconv.ALL_METRICS:
        buckets = estimate.buckets[spec.name]
        what = f"{buckets} buckets, " if buckets else ""
        click.echo(
            f"  {semconv.prometheus_name(spec)}: {what}{estimate.per_histogram[spec.name]} series per attribute set",
            err=True,
        )
    note = f"; no count declared for {', '.join(estimate.undeclared)} (taken as 1)" if estimate.undeclared else ""
    click.echo(f"active series: at most {estimate.total:,} from the metric allowlist{note}", err=True)
    env = " ".join(
        f"{name}={value!r}" if ";" in value else f"{name}={value}" for name, value in profile.library_env().items()
    )
    click.echo(f"services and sidecars: {env}", err=True)
