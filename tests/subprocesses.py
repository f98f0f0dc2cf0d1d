"""Helpers for tests that run one of tokenlat's commands as a child process and read what it prints."""

from __future__ import annotations

import os
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
