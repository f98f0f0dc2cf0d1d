"""What a gateway core's measured throughput means in tokens: the arithmetic of docs/scaling.md.

tokenlat aggregates in the process that records (the library or the sidecar): a replica exports each of its
attribute sets' histograms once per export interval, however many tokens it served. So the gateway's load is

    points/s = replicas x attribute sets per replica x points per attribute set / export interval

and tokens only enter through how many replicas it takes to serve them. Points per attribute set: 6 (TTFT, TPOT,
duration, inter-token latency, and token usage split into input and output). What a point costs the gateway is
measured for tokenlat's own points, classic (the profile's whole bucket layout) and native, by the library sweep
of the bench (bench/gateway_library.py).

It grows with the Prometheus series a point becomes (a classic histogram: a series per bucket, _sum and _count).
The bench also measures telemetrygen's gauge (1 series a point) and histogram (18 series a point) and fits

    CPU per point = per_point + per_series x series per point

which prices a classic point of any layout, and is checked against the measured tokenlat point.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenlat import semconv
from tokenlat_cli.profiles import Profile, load_profile
from tokenlat_cli.render import series_estimate

#: Points per attribute set per export: every histogram once, token usage twice (input and output).
POINTS_PER_SET = len(semconv.ALL_METRICS) + 1


@dataclass(frozen=True)
class CostModel:
    """Gateway CPU seconds per OTLP point, split into a fixed part and a part per Prometheus series."""

    per_point: float
    per_series: float

    @classmethod
    def fit(cls, one: tuple[float, float], other: tuple[float, float]) -> CostModel:
        """From two measured (series per point, CPU seconds per point) pairs. A negative slope (noise, when the
        two cost the same) is taken as none."""
        (s1, c1), (s2, c2) = sorted((one, other))
        slope = max(0.0, (c2 - c1) / (s2 - s1))
        return cls(per_point=max(0.0, c1 - slope * s1), per_series=slope)

    def cpu_per_point(self, series: float) -> float:
        return self.per_point + self.per_series * series


def series_per_set(profile: Profile) -> int:
    """Prometheus series one attribute set's six points become with the profile's histograms."""
    per_histogram = series_estimate(profile).per_histogram
    return sum(per_histogram.values()) + per_histogram[semconv.TOKEN_USAGE]  # token usage: input and output


@dataclass(frozen=True)
class Shape:
    """A deployment: what each replica exports, how often, and how many tokens it serves."""

    name: str
    histograms: str  # classic or native
    attribute_sets: int  # per replica
    series_per_set: int
    interval_s: float
    tokens_per_s: float  # one replica's, served

    @property
    def points_per_replica(self) -> float:
        """OTLP points a second one replica sends."""
        return self.attribute_sets * POINTS_PER_SET / self.interval_s

    @property
    def series_per_replica(self) -> int:
        return self.attribute_sets * self.series_per_set

    def gateway_cores_per_replica(self, cpu_per_point: float) -> float:
        return self.points_per_replica * cpu_per_point

    def tokens_per_core(self, cpu_per_point: float) -> float:
        """Tokens a second whose telemetry one gateway core carries."""
        return self.tokens_per_s / self.gateway_cores_per_replica(cpu_per_point)

    def arithmetic(self, cpu_per_point: float) -> str:
        """The computation, written out."""
        return (
            f"{self.attribute_sets} sets x {POINTS_PER_SET} points / {self.interval_s:g} s ="
            f" {self.points_per_replica:,.1f} points/s per replica, x {cpu_per_point * 1e6:,.1f} us per point ="
            f" {self.gateway_cores_per_replica(cpu_per_point):.2e} cores per replica;"
            f" {self.tokens_per_s:,.0f} tokens/s per replica / that = {self.tokens_per_core(cpu_per_point):,.0f}"
            " tokens/s per gateway core"
        )


#: The deployment the docs price (docs/scaling.md): assumptions, stated, not measurements. A replica is one model
#: server process; 20 attribute sets is, say, 2 models x 2 operations x 5 GPU-type or user-tier values; 2,000
#: tokens a second is a busy replica's output on one accelerator.
EXAMPLE_SETS_PER_REPLICA = 20
EXAMPLE_TOKENS_PER_REPLICA = 2000.0
EXAMPLE_INTERVALS_S = (15.0, 60.0)
#: The built-in profiles whose layouts stand for the two kinds of histogram (and which the library sweep loads).
EXAMPLE_PROFILES = {"classic": "selfhosted", "native": "local"}


def example_profile(kind: str) -> Profile:
    """The built-in profile standing for ``classic`` or ``native`` histograms."""
    return load_profile(EXAMPLE_PROFILES[kind])


def example_shapes() -> list[Shape]:
    return [
        Shape(
            f"{kind}, {interval:g} s",
            kind,
            EXAMPLE_SETS_PER_REPLICA,
            series_per_set(example_profile(kind)),
            interval,
            EXAMPLE_TOKENS_PER_REPLICA,
        )
        for kind in EXAMPLE_PROFILES
        for interval in EXAMPLE_INTERVALS_S
    ]
