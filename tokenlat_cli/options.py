"""Options and error translation shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from tokenlat_cli.profiles import Profile, ProfileError, load_profile

F = TypeVar("F", bound=Callable[..., object])

#: Seconds in-flight work gets after SIGTERM/SIGINT, by default, in the commands that serve (sidecar, alert-relay).
DRAIN_TIMEOUT_S = 30.0


def profile_option(func: F) -> F:
    return click.option(
        "--profile",
        "profile_name",
        required=True,
        metavar="NAME_OR_PATH",
        help="A built-in profile name (see `tokenlat profiles`) or the path of a profile YAML file.",
    )(func)


def load_profile_or_exit(name_or_path: str) -> Profile:
    """Load a profile; a bad one is a usage error (exit 2) that names the file, the field and the reason."""
    try:
        return load_profile(name_or_path)
    except ProfileError as exc:
        raise click.UsageError(str(exc)) from None


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[IPV6]:PORT`` into (host, port); ValueError says what is wrong."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{value!r}: write an IPv6 address in brackets, [::1]:9000")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{value!r}: port {port_text!r} is not an integer") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{value!r}: port {port} is outside 0-65535")
    return host, port


def _listen(ctx: click.Context, param: click.Parameter, value: str) -> tuple[str, int]:
    try:
        return parse_listen(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


def listen_option(default: str, help: str) -> Callable[[F], F]:
    """``--listen HOST:PORT``, given to the command as (host, port); a bad address is a usage error naming it."""
    return click.option(
        "--listen", default=default, show_default=True, callback=_listen, metavar="HOST:PORT", help=help
    )


def drain_timeout_option(help: str) -> Callable[[F], F]:
    """``--drain-timeout S``: how long a serving command lets in-flight work finish after SIGTERM or SIGINT."""
    return seconds_option("--drain-timeout", DRAIN_TIMEOUT_S, help, minimum_open=False)


def count_option(name: str, default: int, minimum: int, help: str) -> Callable[[F], F]:
    """An option that bounds a count or a size: an integer N, at least ``minimum``."""
    return click.option(
        name, type=click.IntRange(min=minimum), default=default, show_default=True, metavar="N", help=help
    )


def seconds_option(name: str, default: float, help: str, *, minimum_open: bool = True) -> Callable[[F], F]:
    """An option that bounds a time: S seconds, more than 0 (or, with ``minimum_open=False``, at least 0)."""
    return click.option(
        name,
        type=click.FloatRange(min=0, min_open=minimum_open),
        default=default,
        show_default=True,
        metavar="S",
        help=help,
    )
