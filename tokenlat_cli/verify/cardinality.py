"""verify's proof that the Collector bounds series for a service that does not bound its own labels.

A service without tokenlat may put anything on its metrics: a user id, a request id, a model name taken from the
request. The rendered Collector drops keys outside the allowlist, replaces values outside ``metrics.values``
with ``_other`` and merges the points that became identical (tokenlat_cli/render.py). This sends one export of
``DISTINCT`` data points, each with its own user id, request id and (for every key the profile lists values
for) its own unlisted value, plus one point per listed value, straight to the Collector's receiver, as such a
service would. Prometheus must then hold exactly one series per listed value and one ``_other`` series (one
series in all when the profile lists no values), and the ``_other`` series must count every point: merged, not
refused as duplicate samples, and nothing lost.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Metric,
    MetricsData,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
    Sum,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.util.instrumentation import InstrumentationScope

from tokenlat import semconv
from tokenlat.attributes import OTHER_VALUE
from tokenlat.configure import TLSFiles
from tokenlat_cli.verify.checks import Check, count_check
from tokenlat_cli.verify.polling import poll
from tokenlat_cli.verify.probes import export_metrics
from tokenlat_cli.verify.promql import PrometheusClient

DISTINCT = 10_000
METRIC = "tokenlat.verify.cardinality"
# As Prometheus names it: UnderscoreEscapingWithSuffixes drops the {request} annotation and adds _total.
SERIES = "tokenlat_verify_cardinality_total"
EXPORT_TIMEOUT = 30.0


def _label(key: str) -> str:
    return key.replace(".", "_")


@dataclass(frozen=True)
class Probe:
    """What is sent, and the series Prometheus must then hold: label values of the listed keys -> count."""

    data: MetricsData
    expected: dict[tuple[str | None, ...], int]
    keys: tuple[str, ...]  # the listed keys, in the order of the tuples above


def build_probe(values: dict[str, list[str]], distinct: int = DISTINCT) -> Probe:
    keys = tuple(values)
    now = time.time_ns()  # one timestamp for every point, as an SDK's collection gives them

    def point(attributes: dict[str, str]) -> NumberDataPoint:
        return NumberDataPoint(attributes=attributes, start_time_unix_nano=now, time_unix_nano=now, value=1)

    points = [
        point({"user.id": f"user-{i}", semconv.REQUEST_ID: f"request-{i}", **{k: f"unlisted-{i}" for k in keys}})
        for i in range(distinct)
    ]
    expected: dict[tuple[str | None, ...], int] = {tuple(OTHER_VALUE if keys else None for _ in keys): distinct}
    for index, key in enumerate(keys):
        for value in values[key]:
            points.append(point({key: value}))
            labels = tuple(value if i == index else None for i in range(len(keys)))
            expected[labels] = expected.get(labels, 0) + 1
    metric = Metric(
        name=METRIC,
        description="verify's cardinality probe: one request per point",
        unit="{request}",
        data=Sum(points, AggregationTemporality.CUMULATIVE, is_monotonic=True),
    )
    scope = ScopeMetrics(InstrumentationScope("tokenlat.verify"), [metric], schema_url="")
    resource = Resource.create({"service.name": "tokenlat-verify-cardinality"})
    return Probe(MetricsData([ResourceMetrics(resource, [scope], "")]), expected, keys)


def cardinality_checks(
    endpoint: str, tls: TLSFiles | None, client: PrometheusClient, values: dict[str, list[str]], timeout: float
) -> list[Check]:
    """Send the probe to the Collector at ``endpoint`` and judge what Prometheus holds within ``timeout``."""
    probe = build_probe(values)
    name = f"{DISTINCT:,} distinct user ids, request ids{' and ' + ', '.join(probe.keys) if probe.keys else ''}"
    if not export_metrics(endpoint, probe.data, tls, EXPORT_TIMEOUT):
        return [Check(f"{name}: export accepted by the Collector", "accepted", "refused", None, "exact", False)]

    Series = list[tuple[tuple[str | None, ...], int]]  # listed keys' label values, count; one item per series

    def read() -> Series:
        found = [
            (tuple(series["metric"].get(_label(k)) for k in probe.keys), int(float(series["value"][1])))
            for series in client.query(SERIES)
        ]
        return sorted(found, key=repr)  # None and str do not compare

    wanted = sorted(probe.expected.items(), key=repr)
    observed = poll(read, lambda seen: seen == wanted, timeout)
    other = next(iter(probe.expected))
    merged = [count for labels, count in observed if labels == other]
    merged_count = merged[0] if len(merged) == 1 else None  # None: no merged series, or more than one
    return [
        count_check(f"{name}: series in Prometheus", len(wanted), len(observed)),
        count_check(f"{name}: requests counted in the merged series", DISTINCT, merged_count),
        Check(
            f"{name}: every series as expected",
            "one per listed value and one for the rest",
            "as expected" if observed == wanted else repr(observed[:3]),
            None,
            "exact",
            observed == wanted,
        ),
    ]
