"""`tokenlat sidecar`: a streaming reverse proxy in front of a model server that records token latency."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import click

import tokenlat
from tokenlat import listening
from tokenlat.detect import DETECT_BYTES
from tokenlat.parsers import FORMATS, MAX_LINE_BYTES
from tokenlat.sidecar import LISTENING_NAME, Sidecar, loops, validate_upstream
from tokenlat.sidecar.models import MAX_MODELS
from tokenlat.sidecar.settings import (
    HEAD_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    MAX_IDLE_UPSTREAM,
    MAX_JSON_BODY,
)
from tokenlat_cli import stopping
from tokenlat_cli.options import count_option, drain_timeout_option, listen_option, seconds_option
from tokenlat_cli.stopping import Stopper

#: Seconds the last export gets after the drain, before the Stopper's watchdog ends the process: the OTLP
#: exporters' own timeout (10 s) with room for their retries.
FLUSH_ALLOWANCE = 30.0


def _upstream(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_upstream(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


async def _run(
    telemetry: tokenlat.Telemetry, upstream: str, host: str, port: int, drain_timeout: float, options: dict[str, Any]
) -> None:
    loop = asyncio.get_running_loop()
    stopping.reclaim_wakeup_fd()  # uvloop took it when it started
    stop = asyncio.Event()

    def request_stop() -> None:  # in the Stopper's thread: hand the request to the loop's
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the sidecar has stopped already
            loop.call_soon_threadsafe(stop.set)

    sidecar = Sidecar(upstream, telemetry.metrics, **options)
    with stopping.on_stop(request_stop):  # called at once when the signal came before the loop ran
        bound = await sidecar.start(host, port)
        try:
            click.echo(listening.line(LISTENING_NAME, host, bound, upstream))
            click.get_text_stream("stdout").flush()  # a supervisor (or a test) waits for this line
            await stop.wait()
            sidecar.begin_drain()  # health answers 503 at once: a load balancer stops sending here
            await sidecar.drain(drain_timeout)  # stops listening, lets in-flight streams finish
        finally:
            await sidecar.close()  # cuts what is left (cancelled), closes every connection


@click.command()
@click.option(
    "--upstream",
    required=True,
    callback=_upstream,
    metavar="URL",
    help="Base URL of the model server, e.g. http://127.0.0.1:8000 (a path prefix is kept).",
)
@listen_option("127.0.0.1:9000", "Address to serve on; port 0 picks a free one (the listening line says which).")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["auto", *FORMATS]),
    default="auto",
    show_default=True,
    help="Stream format; auto detects it per response from the path, content type and first bytes.",
)
@click.option(
    "--user-id-header",
    default="x-user-id",
    show_default=True,
    help="Request header with the end user's id (hashed onto the span when TOKENLAT_USER_ID_KEY is set; never "
    "a metric attribute). Empty: none.",
)
@click.option(
    "--request-id-header",
    default="x-request-id",
    show_default=True,
    help="Request header with the request id (span attribute only).",
)
@count_option(
    "--detect-bytes",
    DETECT_BYTES,
    1,
    "With --format auto: how many of a response's first bytes detection may wait for, to see a complete first "
    "event, before it judges the response on them. The bytes are relayed at once either way.",
)
@count_option(
    "--max-json-body",
    MAX_JSON_BODY,
    0,
    "Bytes of a request body kept to read its JSON model; a longer body is relayed whole and its request recorded "
    "without gen_ai.request.model (0 reads none). Reading one holds every stream for as long as it takes.",
)
@count_option(
    "--max-line-bytes",
    MAX_LINE_BYTES,
    1,
    "Bytes a stream line (SSE event) may take to be parsed; a longer one is relayed, not parsed, and counted.",
)
@click.option("--provider", help="gen_ai.provider.name (vllm, sglang ...); default: the stream format's name.")
@drain_timeout_option("Seconds in-flight streams get to finish after SIGTERM/SIGINT.")
@seconds_option(
    "--idle-timeout",
    IDLE_TIMEOUT_S,
    "Seconds a keep-alive client connection may stay idle between requests before it is closed (longer than the "
    "idle timeout of a load balancer in front, 60 s on most). Never applies while a response streams.",
)
@seconds_option(
    "--head-timeout",
    HEAD_TIMEOUT_S,
    "Seconds a request head has, from its first byte, to arrive whole; else 408 and the connection closes.",
)
@count_option(
    "--max-head-bytes",
    MAX_HEAD_BYTES,
    1,
    "Bytes a request head (start line and header fields) may take; a longer one gets 431 and the connection closes.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help=f"Client connections at most; beyond them a new one gets 503 with Retry-After. [default: {MAX_CONNECTIONS}, "
    "or fewer when the file-descriptor limit (ulimit -n) could not hold them]",
)
@count_option(
    "--max-idle-upstream",
    MAX_IDLE_UPSTREAM,
    0,
    "Idle upstream connections kept alive for reuse; one released beyond them is closed.",
)
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="NAME",
    help="A model name recorded as itself (repeat for each); any other is recorded as _other. Model names come "
    "from clients: without this, the first --max-models distinct names are recorded and the rest as _other.",
)
@count_option(
    "--max-models",
    MAX_MODELS,
    0,
    "Without --model: distinct model names recorded as themselves before the rest become _other.",
)
@click.option(
    "--loop",
    "loop",
    type=click.Choice(loops.LOOPS),
    default="auto",
    show_default=True,
    help="The event loop: uvloop (less CPU per relayed chunk) when installed, else asyncio's; or either one.",
)
def sidecar(upstream: str, listen: tuple[str, int], drain_timeout: float, loop: str, **options: Any) -> None:
    """Proxy a model server and record the token latency of its streams, without touching the server.

    Clients get exactly the bytes the server sends. Telemetry is set up by tokenlat.configure() from the
    OTEL_* and TOKENLAT_* environment variables. The sidecar's own endpoints are GET /-/tokenlat/health and
    GET /-/tokenlat/stats. On SIGTERM or SIGINT it stops accepting, drains in-flight streams, flushes the
    telemetry and exits 0; a second signal ends it at once (exit status 128 + the signal's number).
    """
    host, port = listen
    try:
        loops.resolve(loop)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--loop") from None
    # SIGTERM and SIGINT become a stop request in every phase (tokenlat_cli/stopping.py): never an exception raised
    # in whatever code runs when the signal comes (a KeyboardInterrupt that lands in a finalizer is swallowed, and the
    # sidecar would serve on). The first signal drains; a second one, or a drain and flush that overrun their
    # bound, end the process at once.
    with Stopper(deadline=drain_timeout + FLUSH_ALLOWANCE):
        try:
            telemetry = tokenlat.configure()
        except tokenlat.ConfigurationError as exc:
            raise click.UsageError(str(exc)) from None
        try:
            # Every other option is the Sidecar keyword of its name (fmt, the headers, the limits, the models).
            loops.run(_run(telemetry, upstream, host, port, drain_timeout, options), loop)
        except OSError as exc:  # the port is taken, the host does not resolve ...
            raise click.ClickException(f"cannot listen on {listening.url(host, port)}: {exc}") from None
        finally:
            telemetry.shutdown()  # flushes the last export
