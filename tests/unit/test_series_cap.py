"""The cap on distinct attribute sets per metric (issue 11): bounded memory, the SDK's overflow semantics, nothing
lost, the counter and the warning. No timed asserts: the hot-path cost is bench.hot_path's to measure."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader, Metric
from opentelemetry.sdk.metrics.view import View
from opentelemetry.util.types import AttributeValue

from tests.conftest import REPO
from tests.otel_helpers import Pipeline
from tokenlat import semconv
from tokenlat.buckets import BucketLayout
from tokenlat.histograms import (
    ATTRIBUTE_OVERFLOW,
    DEFAULT_MAX_ATTRIBUTE_SETS,
    MAX_ATTRIBUTE_SETS_ENV,
    OVERFLOW_ATTRIBUTE,
    MetricStore,
)
from tokenlat.recorder import TokenMetrics

OVERFLOW = {OVERFLOW_ATTRIBUTE: True}


@pytest.fixture
def capped() -> Iterator[Pipeline]:
    p = Pipeline(max_attribute_sets=4)
    yield p
    p.close()


def record(p: Pipeline, attributes: Mapping[str, AttributeValue], **request: object) -> None:
    """A request at t=0 with tokens at 0.5 and 0.75, ending at 1.0: one observation in each of the five metrics
    (two in token usage when ``input_tokens`` is given)."""
    p.clock.now = 0.0
    rec = p.metrics.request(attributes, **request)  # type: ignore[arg-type]
    for t in (0.5, 0.75):
        p.clock.now = t
        rec.tokens()
    p.clock.now = 1.0
    rec.finish()


def model(i: int) -> dict[str, AttributeValue]:
    return {semconv.GEN_AI_REQUEST_MODEL: f"client-chosen-model-{i}"}


def points(metrics: Mapping[str, Metric], name: str) -> list[HistogramDataPoint]:
    return list(metrics[name].data.data_points)  # type: ignore[arg-type]


def split(data_points: Sequence[HistogramDataPoint]) -> tuple[list[HistogramDataPoint], HistogramDataPoint | None]:
    """(the ordinary points, the overflow point or None); fails on more than one overflow point."""
    overflow = [p for p in data_points if dict(p.attributes or {}) == OVERFLOW]
    assert len(overflow) <= 1
    return [p for p in data_points if OVERFLOW_ATTRIBUTE not in (p.attributes or {})], (overflow or [None])[0]


def counter(metrics: Mapping[str, Metric], name: str = ATTRIBUTE_OVERFLOW) -> int:
    (point,) = metrics[name].data.data_points
    return point.value  # type: ignore[return-value,union-attr]


def test_20000_model_names_stay_within_the_cap_and_lose_no_observation(caplog: pytest.LogCaptureFixture) -> None:
    """Issue 11's measurement: 20,000 requests with 20,000 distinct gen_ai.request.model values gave 20,000 data
    points in each histogram. Now each has the cap's 2,000 plus the one overflow point, holding the other 18,000."""
    requests, cap = 20_000, DEFAULT_MAX_ATTRIBUTE_SETS
    p = Pipeline()
    try:
        with caplog.at_level(logging.WARNING, logger="tokenlat"):
            for i in range(requests):
                record(p, model(i))
        metrics = p.collect()
    finally:
        p.close()
    # Every request has 2 tokens: 1 TTFT, 1 TPOT, 1 duration, 1 output-token usage, 1 inter-token gap each.
    expected_sum = {
        semconv.TIME_TO_FIRST_TOKEN: 0.5,
        semconv.TIME_PER_OUTPUT_TOKEN: 0.5,
        semconv.REQUEST_DURATION: 1.0,
        semconv.TOKEN_USAGE: 2.0,
        semconv.INTER_TOKEN_LATENCY: 0.25,
    }
    for spec in semconv.ALL_METRICS:
        ordinary, overflow = split(points(metrics, spec.name))
        assert len(ordinary) == cap, spec.name
        assert overflow is not None, spec.name
        assert overflow.count == requests - cap, spec.name
        assert overflow.sum == pytest.approx((requests - cap) * expected_sum[spec.name])
        # Nothing lost, only merged: the totals over every point are all the requests'.
        assert sum(dp.count for dp in (*ordinary, overflow)) == requests, spec.name
        assert sum(dp.sum for dp in (*ordinary, overflow)) == pytest.approx(requests * expected_sum[spec.name])
        assert sum(sum(dp.bucket_counts) for dp in (*ordinary, overflow)) == requests, spec.name
        # The first `cap` models got their own points, in arrival order; the rest none.
        models = {dp.attributes[semconv.GEN_AI_REQUEST_MODEL] for dp in ordinary}  # type: ignore[index]
        assert models == {model(i)[semconv.GEN_AI_REQUEST_MODEL] for i in range(cap)}, spec.name
    assert counter(metrics) == requests - cap
    warnings = [r for r in caplog.records if r.name == "tokenlat" and r.levelno == logging.WARNING]
    assert sorted(r.args[0] for r in warnings) == sorted(spec.name for spec in semconv.ALL_METRICS)  # type: ignore[index]
    for warning in warnings:
        text = warning.getMessage()
        assert "client-chosen-model" not in text, "attribute values never reach a log line"
        assert f"cap of {cap} distinct attribute sets" in text
        assert MAX_ATTRIBUTE_SETS_ENV in text and "max_attribute_sets" in text and ATTRIBUTE_OVERFLOW in text


def test_the_store_holds_no_more_than_the_cap() -> None:
    """What bounds memory: the store itself keeps the cap's sets and one overflow point, whatever was recorded."""
    p = Pipeline(max_attribute_sets=10)
    try:
        for i in range(500):
            record(p, model(i), input_tokens=3)
        store = p.metrics.store
        for histogram in (store.ttft, store.tpot, store.duration, store.usage, store.inter_token):
            assert histogram.attribute_sets == 10, histogram.spec.name
            assert len(histogram.snapshot()) == 11, histogram.spec.name
    finally:
        p.close()


def test_existing_attribute_sets_keep_recording_after_the_cap(capped: Pipeline) -> None:
    for i in range(6):  # models 0-3 fill the cap, 4 and 5 overflow
        record(capped, model(i))
    for _ in range(3):
        record(capped, model(0))
    record(capped, model(99))  # a new set: still overflows
    metrics = capped.collect()
    for spec in semconv.ALL_METRICS:
        ordinary, overflow = split(points(metrics, spec.name))
        counts = {dp.attributes[semconv.GEN_AI_REQUEST_MODEL]: dp.count for dp in ordinary}  # type: ignore[index]
        assert counts == {
            model(0)[semconv.GEN_AI_REQUEST_MODEL]: 4,
            **{model(i)[semconv.GEN_AI_REQUEST_MODEL]: 1 for i in (1, 2, 3)},
        }
        assert overflow is not None and overflow.count == 3, spec.name
    assert counter(metrics) == 3


def test_no_overflow_up_to_the_cap_exactly(capped: Pipeline) -> None:
    """The specification's guarantee, and the SDK's: no overflow while the distinct sets are at most the cap."""
    for i in range(4):
        record(capped, model(i))
    metrics = capped.collect()
    for spec in semconv.ALL_METRICS:
        ordinary, overflow = split(points(metrics, spec.name))
        assert len(ordinary) == 4 and overflow is None, spec.name
    assert counter(metrics) == 0


def test_each_metric_counts_its_own_attribute_sets(capped: Pipeline) -> None:
    """The cap is per metric and on the metric's full attribute set, as the SDK's: token usage has an input and an
    output set per request's set, so it reaches the cap at half as many models; error.type sets count on the
    duration only. A request is counted once however many of its observations overflowed."""
    for i in range(2):
        record(capped, model(i), input_tokens=7)  # usage: 4 sets, full
    record(capped, model(2), input_tokens=7)  # usage overflows (input and output); the others have 3 sets
    capped.clock.now = 0.0
    capped.metrics.request(model(0)).finish(error=TimeoutError())  # duration: the 4th set, {model 0, error.type}
    record(capped, model(3))  # usage overflows (output); ttft, tpot, itl: the 4th set; duration: overflows
    metrics = capped.collect()
    sets = {spec.name: split(points(metrics, spec.name)) for spec in semconv.ALL_METRICS}
    ordinary, overflow = sets[semconv.TOKEN_USAGE]
    assert len(ordinary) == 4 and overflow is not None
    assert overflow.count == 3 and overflow.sum == 7 + 2 + 2  # model 2's input and output, model 3's output
    ordinary, overflow = sets[semconv.REQUEST_DURATION]
    assert len(ordinary) == 4 and overflow is not None and overflow.count == 1
    assert {dp.attributes.get(semconv.ERROR_TYPE) for dp in ordinary} == {None, "TimeoutError"}  # type: ignore[union-attr]
    for name in (semconv.TIME_TO_FIRST_TOKEN, semconv.TIME_PER_OUTPUT_TOKEN, semconv.INTER_TOKEN_LATENCY):
        ordinary, overflow = sets[name]
        assert len(ordinary) == 4 and overflow is None, name
    assert counter(metrics) == 2  # model 2's request and model 3's


def test_matches_the_sdks_cardinality_limit() -> None:
    """The same attribute sets through the installed SDK's histogram, with the same limit, give the same points:
    the same ordinary sets, the overflow set {otel.metric.overflow: True}, the same counts in each."""
    limit, sets = 5, [model(i % 9) for i in range(30)]  # 9 sets, each seen again: the first 5 keep their own
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader], views=[View(instrument_name="sdk", aggregation_cardinality_limit=limit)]
    )
    histogram = provider.get_meter("test").create_histogram("sdk")
    for attributes in sets:
        histogram.record(1.0, attributes)
    data = reader.get_metrics_data()
    assert data is not None
    (sdk_metric,) = data.resource_metrics[0].scope_metrics[0].metrics
    sdk_counts = {frozenset(dp.attributes.items()): dp.count for dp in sdk_metric.data.data_points}  # type: ignore[union-attr]
    provider.shutdown()

    store = MetricStore(max_attribute_sets=limit)
    for attributes in sets:
        store.ttft.add(frozenset(attributes.items()), attributes, 1.0, None)
    ours = {frozenset(p.attributes.items()): p.count for p in store.ttft.snapshot()}
    assert ours == sdk_counts
    assert sdk_counts[frozenset(OVERFLOW.items())] == sum(1 for i in range(30) if i % 9 >= limit)


def test_exponential_histograms_are_capped_alike() -> None:
    p = Pipeline(exponential=True, max_attribute_sets=3)
    try:
        for i in range(8):
            record(p, model(i))
        metrics = p.collect()
        for spec in semconv.ALL_METRICS:
            data_points = metrics[spec.name].data.data_points
            assert len(data_points) == 4, spec.name
            (overflow,) = [dp for dp in data_points if dict(dp.attributes or {}) == OVERFLOW]
            assert overflow.count == 5, spec.name
        assert counter(metrics) == 5
    finally:
        p.close()


def test_the_counter_is_exported_from_the_start(pipeline: Pipeline) -> None:
    """At 0 before any overflow, so that an alert on its increase works from the first scrape."""
    record(pipeline, model(0))
    assert counter(pipeline.collect()) == 0
    assert pipeline.metrics.store.max_attribute_sets == DEFAULT_MAX_ATTRIBUTE_SETS


def test_the_warning_is_logged_once_per_metric(capped: Pipeline, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tokenlat"):
        for i in range(20):
            record(capped, model(i))
    named = [r.args[0] for r in caplog.records if "reached its cap" in r.getMessage()]  # type: ignore[index]
    assert sorted(named) == sorted(spec.name for spec in semconv.ALL_METRICS)
    assert "client-chosen-model" not in caplog.text


@pytest.mark.parametrize("bad", [0, -1, True, 2.5, "10"])
def test_a_bad_cap_is_refused_naming_the_setting(bad: object) -> None:
    with pytest.raises(ValueError, match=r"max_attribute_sets: must be a whole number of at least 1"):
        TokenMetrics(MeterProvider(), max_attribute_sets=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"max_attribute_sets: must be a whole number of at least 1"):
        MetricStore(layout=BucketLayout(), max_attribute_sets=bad)  # type: ignore[arg-type]


def test_the_docs_name_the_cap_its_setting_and_its_counter() -> None:
    metrics_doc = (REPO / "docs" / "metrics.md").read_text(encoding="utf-8")
    limits_doc = (REPO / "docs" / "limits.md").read_text(encoding="utf-8")
    for doc in (metrics_doc, limits_doc):
        assert f"`{ATTRIBUTE_OVERFLOW}`" in doc
        assert f"`{MAX_ATTRIBUTE_SETS_ENV}`" in doc
        assert f"{OVERFLOW_ATTRIBUTE}=true" in doc
    assert f"`{ATTRIBUTE_OVERFLOW.replace('.', '_')}_total`" in metrics_doc
    assert "docs/limits.md" in metrics_doc or "(limits.md)" in metrics_doc
