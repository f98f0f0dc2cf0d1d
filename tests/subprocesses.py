"""Helpers for tests that run one of tokenlat's commands as a child process and read what it prints."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys

TOKENLAT = [sys.executable, "-m", "tokenlat_cli"]


def read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    """The child's next line of stdout; fails the test if none comes within ``timeout`` seconds."""
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, "no line in time"
    return proc.stdout.readline()


def stop(proc: subprocess.Popen[str]) -> None:
    """Kill the child if it still runs, reap it and close its pipes (a test's cleanup, whatever happened)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def verify_subprocess(
    args: list[str], env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """`tokenlat verify ARGS` run to its end as a child process, with ``env`` over this environment."""
    return subprocess.run(
        [*TOKENLAT, "verify", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )


#: A row of verify's table whose result column says FAIL.
_FAILED_ROW = re.compile(r"\s{2}FAIL(\s{2}|$)")


def failed_first(result: subprocess.CompletedProcess[str]) -> str:
    """What a run printed, the rows of checks that failed first: CI shows a failing test's first lines, and one
    failed row in a table of forty would be cut from them."""
    printed = result.stdout + result.stderr
    failed = [line for line in printed.splitlines() if _FAILED_ROW.search(line)]
    return "\n".join(["checks that failed:", *failed, "", printed]) if failed else printed
