"""The `tokenlat` console script. The core library installs without the command line's packages; without them,
the command says which extra to install in one line instead of a traceback."""

from __future__ import annotations

import sys

from tokenlat.extras import MissingExtra, require
from tokenlat_cli.commands import COMMANDS


def main() -> None:
    command = sys.argv[1] if len(sys.argv) > 1 and not sys.argv[1].startswith("-") else ""
    try:
        extra = COMMANDS[command].extra if command in COMMANDS else "cli"  # help, --version: click, from [cli]
        require(extra, f"tokenlat {command}".strip())
    except MissingExtra as exc:
        print(f"tokenlat: {exc}", file=sys.stderr)
        sys.exit(2)
    from tokenlat_cli.main import cli

    cli()
