"""tokenlat's own points into the gateway: what telemetrygen cannot send.

A tokenlat histogram is not telemetrygen's: a classic one carries the profile's whole bucket layout (selfhosted's
geometric layout: 111 to 167 buckets, 622 Prometheus series an attribute set), a native one is an exponential
histogram at scale 6. What the gateway spends on such a point is what the tokens arithmetic needs
(bench/gateway_sizing.py), so it is measured too: a child process (this module, run as a program) records a few
requests for each of ``sets`` attribute sets with the library, as a service does (``configure()``, the profile's
layout), and then exports the same cumulative histograms every ``interval`` seconds until it is stopped: ``sets`` x 6
points each time, whatever it recorded. The attribute sets differ in ``tokenlat.scene`` (an allowlisted key).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tokenlat import semconv

if TYPE_CHECKING:  # the child imports this module too, and needs none of the stack's machinery
    from bench.gateway_stack import Stack
    from tokenlat_cli.verify.processes import ManagedProcess

SCENE_PREFIX = "bench-"
REPO = Path(__file__).resolve().parents[1]
#: Requests recorded per attribute set, with gaps drawn around 30 ms: enough for an exponential histogram to hold
#: the tens of buckets a real one does (a classic one carries all of its buckets whatever it holds).
REQUESTS_PER_SET = 20
TOKENS_PER_REQUEST = 8


@dataclass(frozen=True)
class LibraryLoad:
    """``sets`` attribute sets of tokenlat's histograms (``histogram``: explicit or exponential), every
    ``interval_s``; the same interface as :class:`bench.telemetrygen.Load` where a step needs it."""

    histogram: str
    profile: str
    sets: int
    interval_s: float
    series_per_set: int  # Prometheus series (bench/gateway_sizing.py Shape.of_profile)

    @property
    def metric_type(self) -> str:
        return f"tokenlat-{'classic' if self.histogram == 'explicit' else 'native'}"

    @property
    def points_per_set(self) -> int:
        return len(semconv.ALL_METRICS) + 1  # token usage: input and output

    @property
    def rate(self) -> float:
        return self.sets * self.points_per_set / self.interval_s

    @property
    def series(self) -> int:
        return self.sets * self.points_per_set

    @property
    def series_per_point(self) -> float:
        return self.series_per_set / self.points_per_set

    @property
    def measure_floor_s(self) -> float:
        return 2 * self.interval_s

    @property
    def one_series_each(self) -> str | None:
        """Classic histograms: their _count series, one per point. Native ones are not counted: VictoriaMetrics
        stores none that arrive by remote write (docs/profiles.md)."""
        if self.histogram != "explicit":
            return None
        return f'{{__name__=~"gen_ai_.+_count", tokenlat_scene=~"{SCENE_PREFIX}.+"}}'

    def argv(self, endpoint: str) -> list[str]:
        return [
            sys.executable, "-m", "bench.gateway_library", "--endpoint", f"http://{endpoint}",
            "--sets", str(self.sets), "--interval", f"{self.interval_s:g}", "--histogram", self.histogram,
            "--profile", self.profile,
        ]  # fmt: skip


class LibraryDriver:
    """The child, started at the first tick and stopped at the end; the interface of bench/gateway_load.Generator."""

    def __init__(self, stack: Stack, load: LibraryLoad) -> None:
        self.stack, self.load = stack, load
        self.process: ManagedProcess | None = None
        self.started = 0
        self.failures: list[str] = []

    def tick(self) -> None:
        if self.process is None:
            log = self.stack.workdir / f"library-{self.load.histogram}.log"
            env = {"PYTHONPATH": str(REPO)}  # `bench` is not installed
            argv = self.load.argv(self.stack.endpoint)
            self.process = self.stack.group.start("tokenlat library load", argv, log, env)
            self.started = 1
        elif self.process.popen.poll() is not None and not self.failures:
            self.failures.append(f"exited {self.process.popen.returncode} while loading")

    def finish(self) -> None:
        if self.process is not None:
            self.process.stop(grace=5.0)


def _record(sets: int, interval: float, histogram: str, endpoint: str, profile: str) -> None:
    from tokenlat.configure import configure
    from tokenlat_cli.profiles import load_profile

    telemetry = configure(
        endpoint=endpoint,
        protocol="grpc",
        histogram=histogram,
        buckets=load_profile(profile).layout,
        export_interval_millis=interval * 1000,
        resource_attributes={"service.name": "tokenlat-bench-gateway"},
        environ={},
    )
    rng = random.Random(1)
    for index in range(sets):
        attributes = {semconv.GEN_AI_OPERATION_NAME: "chat", semconv.SCENE: f"{SCENE_PREFIX}{index}"}
        for _ in range(REQUESTS_PER_SET):
            with telemetry.metrics.request(attributes, input_tokens=100) as rec:
                at = time.monotonic()
                for _ in range(TOKENS_PER_REQUEST):
                    at += rng.lognormvariate(-3.5, 0.8)
                    rec.tokens(at=at)
    print("recorded; exporting until stopped", flush=True)
    while True:  # the SDK's reader exports every interval; SIGTERM ends the process
        time.sleep(3600)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_library", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--sets", type=int, required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--histogram", choices=("explicit", "exponential"), required=True)
    parser.add_argument("--profile", required=True)
    args = parser.parse_args(argv)
    _record(args.sets, args.interval, args.histogram, args.endpoint, args.profile)
    return 0


if __name__ == "__main__":
    sys.exit(main())
