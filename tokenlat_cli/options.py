"""Options and error translation shared by the commands."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import click

from tokenlat_cli.profiles import Profile, ProfileError, load_profile

F = TypeVar("F", bound=Callable[..., object])


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
