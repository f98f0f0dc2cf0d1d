"""`tokenlat verify`: prove the whole path end to end against a real Collector and a real Prometheus."""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

import click

from tokenlat_cli.collector import CollectorError, find_collector
from tokenlat_cli.files import write_atomically
from tokenlat_cli.options import load_profile_or_exit, profile_option
from tokenlat_cli.stopping import Stopper
from tokenlat_cli.verify.html_report import render_html
from tokenlat_cli.verify.processes import ServiceError
from tokenlat_cli.verify.runner import UnsupportedProfile, VerifySettings, check_supported, run_verify
from tokenlat_cli.verify.scale_out import ScaleOutSettings, run_scale_out
from tokenlat_cli.verify.scale_out_topology import UnsupportedTopology, check_scale_out_supported
from tokenlat_cli.verify.synthetic import Distribution, parse_token_range

DEFAULTS = VerifySettings()
SCALE_OUT = ScaleOutSettings()
#: --topology scale-out: the load runs until its faults are done, --requests at most, a few streams at a time (the
#: topology's ten processes share the machine with it).
SCALE_OUT_REQUESTS = 20_000
SCALE_OUT_CONCURRENCY = 8
#: Seconds after SIGTERM or Ctrl-C within which verify has stopped every child and removed its temp dir: the run
#: needs at most about 2 (INTERRUPTED_GRACE for the children); past this the Stopper's watchdog kills them and exits.
STOP_DEADLINE = 10.0


def _distribution(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return str(Distribution.parse(value))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def _token_range(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        low, high = parse_token_range(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return f"{low}-{high}"


def _writable_file(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """Refuse, before a run of minutes, a path the report could not be written to: the nearest existing ancestor
    must be a writable directory (missing directories are created when it is written)."""
    if value is None:
        return None
    existing = next(p for p in value.absolute().parents if p.exists())
    if not existing.is_dir():
        raise click.BadParameter(f"{value}: {existing} is not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise click.BadParameter(f"{value}: the directory {existing} is not writable")
    return value


@click.command(short_help="Prove the path end to end: known token timings through the real Collector and backend.")
@profile_option
@click.option(
    "--topology",
    type=click.Choice(["single", "scale-out"]),
    default="single",
    show_default=True,
    help="single: one Collector and one receiver. scale-out (thanos profiles): services on two nodes, an agent per "
    "node, three gateways, a Thanos Receive hashring (replication factor 3) read through Query; an ingestor, a "
    "gateway and an agent fail while the load runs (docs/scale-out.md).",
)
@click.option(
    "--requests",
    "total",
    type=click.IntRange(min=1),
    default=None,
    help=f"Streaming requests to send in all [default: {DEFAULTS.requests}]; with --topology scale-out the load "
    f"runs until its faults are done, at most this many [default: {SCALE_OUT_REQUESTS}].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(min=1),
    default=None,
    help=f"Requests in flight at once [default: {DEFAULTS.concurrency}; {SCALE_OUT_CONCURRENCY} with --topology "
    "scale-out].",
)
@click.option(
    "--hold-exports",
    type=click.IntRange(min=1),
    default=SCALE_OUT.hold_exports,
    show_default=True,
    help="--topology scale-out: exports every service makes after each fault before the next step (the load runs on "
    "that many export intervals).",
)
@click.option("--seed", type=int, default=DEFAULTS.seed, show_default=True, help="Seed of the synthetic timings.")
@click.option(
    "--ttft",
    default=DEFAULTS.ttft,
    show_default=True,
    callback=_distribution,
    help="Time to first token of the synthetic server (fixed:V, uniform:LO,HI, lognormal:MEDIAN,SIGMA, "
    "normal:MEAN,SD).",
)
@click.option(
    "--inter-token",
    default=DEFAULTS.inter_token,
    show_default=True,
    callback=_distribution,
    help="Gap between tokens of the synthetic server.",
)
@click.option(
    "--output-tokens",
    default=DEFAULTS.output_tokens,
    show_default=True,
    callback=_token_range,
    metavar="LO-HI",
    help="Completion length range.",
)
@click.option(
    "--deadline",
    type=click.FloatRange(min=1),
    default=DEFAULTS.deadline,
    show_default=True,
    help="Seconds to wait for the data to arrive in the receiver.",
)
@click.option(
    "--histogram",
    type=click.Choice(["explicit", "exponential"]),
    default=None,
    help="explicit: classic Prometheus histograms (the profile's metrics.buckets); exponential: native histograms. "
    "Default: the profile's metrics.histograms.",
)
@click.option(
    "--via-sidecar",
    is_flag=True,
    help="Send the traffic through `tokenlat sidecar`, which measures it from outside, instead of the library.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_writable_file,
    help="Also write the report as JSON here.",
)
@click.option(
    "--html",
    "html_path",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=_writable_file,
    help="Also write the report as a self-contained HTML page here: the checks, and per latency metric a chart of "
    "the true distribution with the quantiles the backend answered.",
)
@click.option("--keep", is_flag=True, help="Keep the temp dir (configs, logs, Prometheus data) and print its path.")
def verify(
    profile_name: str,
    topology: str,
    total: int | None,
    concurrency: int | None,
    hold_exports: int,
    seed: int,
    ttft: str,
    inter_token: str,
    output_tokens: str,
    deadline: float,
    histogram: str | None,
    via_sidecar: bool,
    json_path: Path | None,
    html_path: Path | None,
    keep: bool,
) -> None:
    """Push synthetic token streams with known timings through the real Collector into the profile's real
    receiver (Prometheus, VictoriaMetrics or Thanos, with its auth and TLS), and compare what arrives with the
    truth.

    Exit status: 0 when every check passes, 1 when one fails or a service cannot start, 2 on bad usage; on SIGTERM
    or Ctrl-C it stops every process it started, removes its temp dir and exits with 143 or 130 (a second signal:
    at once).
    """
    # gRPC's C core prints TLS handshake failures to stderr itself; verify provokes some on purpose (the mutual-TLS
    # probe) and reports every outcome in its table, so keep the core quiet unless the caller asked otherwise. Set
    # here, not at import: gRPC is imported later, by the run, and other commands keep gRPC's defaults.
    os.environ.setdefault("GRPC_VERBOSITY", "NONE")
    profile = load_profile_or_exit(profile_name)
    scale_out = topology == "scale-out"
    if scale_out and via_sidecar:
        raise click.UsageError("--via-sidecar: the scale-out topology's services are the library (four of them)")
    try:
        check_supported(profile)
        if scale_out:
            check_scale_out_supported(profile)
        find_collector()
    except (UnsupportedProfile, UnsupportedTopology) as exc:
        raise click.UsageError(str(exc)) from None
    except CollectorError as exc:
        raise click.ClickException(str(exc)) from None
    settings = VerifySettings(
        requests=total or (SCALE_OUT_REQUESTS if scale_out else DEFAULTS.requests),
        concurrency=concurrency or (SCALE_OUT_CONCURRENCY if scale_out else DEFAULTS.concurrency),
        seed=seed,
        ttft=ttft,
        inter_token=inter_token,
        output_tokens=output_tokens,
        deadline=deadline,
        histogram=histogram,
        via_sidecar=via_sidecar,
    )
    # SIGTERM and Ctrl-C become a stop request (tokenlat_cli/stopping.py): the children are signalled at once from
    # the Stopper's thread, the run unwinds from its next safe point, and the watchdog ends the process should it
    # not within STOP_DEADLINE seconds. Nothing is raised from a signal handler.
    with Stopper(deadline=STOP_DEADLINE) as stopper:
        workdir = Path(tempfile.mkdtemp(prefix="tokenlat-verify-"))
        stopper.on_give_up(lambda: _remove(workdir, keep))
        try:

            def echo(line: str) -> None:
                click.echo(line, err=True)

            if scale_out:
                report = run_scale_out(profile, settings, workdir, echo, ScaleOutSettings(hold_exports=hold_exports))
            else:
                report = run_verify(profile, settings, workdir, echo)
        except BaseException as exc:
            if stopper.requested.is_set():  # whatever the stop surfaced as: Interrupted, a dead child, a refused port
                report = None
            elif isinstance(exc, (ServiceError, CollectorError)):
                raise click.ClickException(str(exc)) from None
            else:
                raise
        finally:
            if keep:
                click.echo(f"kept {workdir}", err=True)
            _remove(workdir, keep)
        if report is not None:
            click.echo(report.table())
            if json_path is not None:
                _write_report(json_path, report.to_json(), "JSON")
            if html_path is not None:
                _write_report(html_path, render_html(report), "HTML")
        if stopper.requested.is_set():
            _exit_interrupted(stopper)
    if report is not None and not report.passed:
        raise SystemExit(1)


def _remove(workdir: Path, keep: bool) -> None:
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)


def _exit_interrupted(stopper: Stopper) -> NoReturn:
    """Say so and end the process now, with 128 + the signal's number, as a shell reports a process the signal
    ended. os._exit, not SystemExit: the exit hooks of what the run left behind (the OpenTelemetry SDK flushing to a
    Collector that is gone, executor threads) would hold the exit for their timeouts."""
    name = stopper.signal_name or "SIGTERM"
    click.echo(f"Error: interrupted by {name}; every started process was stopped", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(128 + signal.Signals[name].value)


def _write_report(path: Path, text: str, kind: str) -> None:
    try:
        write_atomically(path, text)
    except OSError as exc:
        raise click.ClickException(f"cannot write the {kind} report to {path}: {exc}") from None
