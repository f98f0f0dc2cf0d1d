"""Which event loop runs the sidecar: uvloop when installed (it comes with the [sidecar] extra), else asyncio's.

uvloop (libuv) relays the same bytes with less CPU per chunk than asyncio's selector loop: in `make bench` the
sidecar's CPU per relayed chunk fell by about a fifth and its added p99 latency with it (docs/benchmarks.md), as
uvicorn, the model for this server, finds too. The sidecar's code is the same on both; ``--loop asyncio`` keeps
the standard library's loop (for a platform without uvloop wheels, or to rule the loop out when debugging).
"""

from __future__ import annotations

import asyncio
import importlib.util
from collections.abc import Coroutine
from typing import Any, TypeVar

LOOPS = ("auto", "asyncio", "uvloop")
T = TypeVar("T")


def resolve(loop: str) -> str:
    """The loop ``loop`` stands for here: "auto" is uvloop when it can be imported, else asyncio."""
    if loop not in LOOPS:
        raise ValueError(f"unknown event loop {loop!r}: must be one of {', '.join(LOOPS)}")
    installed = importlib.util.find_spec("uvloop") is not None
    if loop == "uvloop" and not installed:
        raise ValueError("the uvloop event loop is not installed: pip install uvloop (the [sidecar] extra has it)")
    return "uvloop" if loop == "uvloop" or (loop == "auto" and installed) else "asyncio"


def run(main: Coroutine[Any, Any, T], loop: str = "auto") -> T:
    """Run ``main`` to its end on a new event loop of the kind ``loop`` resolves to, as ``asyncio.run`` does."""
    if resolve(loop) == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
