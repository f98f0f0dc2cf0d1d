"""`tokenlat alert-relay`: Alertmanager's webhook in; DingTalk, Feishu/Lark and WeCom group robots out."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from typing import TextIO
from urllib.parse import urlsplit

import click

from tokenlat import listening
from tokenlat_cli import stopping
from tokenlat_cli.options import drain_timeout_option, listen_option, load_profile_or_exit, profile_option
from tokenlat_cli.relay.robots import Robot, RobotConfigError, load_robots
from tokenlat_cli.relay.server import LISTENING_NAME, Redactor, Relay
from tokenlat_cli.stopping import Stopper

#: Seconds the stop gets beyond the drain (closing connections), before the Stopper's watchdog ends the process.
STOP_ALLOWANCE = 10.0


def _logging(robots: list[Robot], stream: TextIO | None = None) -> None:
    """Log lines on stderr, every robot URL, token and secret replaced by ***, whoever logs (aiohttp too)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    handler.addFilter(Redactor([s for robot in robots for s in robot.secrets()]))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


async def _serve(relay: Relay, host: str, port: int, drain_timeout: float, robots: list[Robot]) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def request_stop() -> None:  # in the Stopper's thread
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(stop.set)

    with stopping.on_stop(request_stop):
        bound = await relay.start(host, port)
        try:
            names = ", ".join(r.kind.label for r in robots) or "no robot"
            click.echo(listening.line(LISTENING_NAME, host, bound, names))
            click.get_text_stream("stdout").flush()  # a supervisor (or a test) waits for this line
            await stop.wait()
            logging.getLogger("tokenlat.relay").info("stopping: sending what is queued (up to %gs)", drain_timeout)
            await relay.drain(drain_timeout)
        finally:
            await relay.close()


@click.command("alert-relay")
@profile_option
@listen_option(
    "127.0.0.1:9096",
    "Address to serve on (alerting.relay_url must reach it); port 0 picks a free one (the listening line says which).",
)
@drain_timeout_option(
    "Seconds queued messages get to go out after SIGTERM/SIGINT (the robots' rate limits still apply)."
)
def alert_relay(profile_name: str, listen: tuple[str, int], drain_timeout: float) -> None:
    """Relay Alertmanager's webhook to DingTalk, Feishu/Lark and WeCom group robots, within their rate limits.

    The robots are those whose webhook variable the profile's alerting section names; URLs and signing secrets
    come from those environment variables and are never logged. Alertmanager posts to the path of
    alerting.relay_url; GET /-/health, /-/stats (JSON) and /metrics report on the relay. On SIGTERM or SIGINT it
    stops taking alerts, sends what is queued within --drain-timeout and exits 0; a second signal ends it at once.
    """
    profile = load_profile_or_exit(profile_name)
    alerting = profile.data["alerting"]
    try:
        robots = load_robots(alerting, os.environ)
    except RobotConfigError as exc:
        raise click.UsageError(f"{profile.source}: {exc}") from None
    if not robots:
        raise click.UsageError(
            f"{profile.source}: alerting names no robot: set alerting.dingtalk_webhook_env, feishu_webhook_env "
            "or wecom_webhook_env"
        )
    _logging(robots)
    host, port = listen
    relay = Relay(
        robots,
        path=urlsplit(alerting["relay_url"]).path or "/",
        queue_size=alerting["queue_size"],
        max_attempts=alerting["max_attempts"],
    )
    with Stopper(deadline=drain_timeout + STOP_ALLOWANCE):
        try:
            asyncio.run(_serve(relay, host, port, drain_timeout, robots))
        except OSError as exc:
            raise click.ClickException(f"cannot listen on {listening.url(host, port)}: {exc}") from None
