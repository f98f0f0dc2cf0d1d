"""The explicit recording API, the inter-token distribution, spans and exemplars, under a fake clock."""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections.abc import Iterator, Sequence

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    ExponentialHistogramDataPoint,
    InMemoryMetricReader,
)
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.otel_helpers import MODEL, Pipeline, point
from tokenlat import semconv
from tokenlat.attributes import MAX_VALUE_CHARS
from tokenlat.buckets import BucketLayout
from tokenlat.histograms import EXPONENTIAL_SCALE, ZERO, explicit_index, exponential_index
from tokenlat.privacy import UserIdHasher
from tokenlat.recorder import ATTRIBUTE_OVERFLOW, CANCELLED, DROPPED_ATTRIBUTES, TRUNCATED_ATTRIBUTES, TokenMetrics
from tokenlat.stream import instrument

# The default layout's inter-token boundaries (geometric, 5%): what a TokenMetrics records with.
ITL_BOUNDS = BucketLayout().bounds(semconv.INTER_TOKEN_LATENCY)


def play(p: Pipeline, arrivals: Sequence[tuple[float, int]], end: float, **request: object) -> None:
    """A request at t=0 whose chunks of n tokens arrive at the given times."""
    p.clock.now = 0.0
    rec = p.metrics.request(MODEL, **request)  # type: ignore[arg-type]
    for t, n in arrivals:
        p.clock.now = t
        rec.tokens(n)
    p.clock.now = end
    rec.finish()


def bucket_counts(bounds: Sequence[float], values: Sequence[tuple[float, int]]) -> list[int]:
    counts = [0] * (len(bounds) + 1)
    index = explicit_index(bounds)
    for value, n in values:
        counts[index(value)] += n
    return counts


def test_explicit_api_records_exact_values(pipeline: Pipeline) -> None:
    play(pipeline, [(0.5, 1), (0.75, 1), (1.0, 1), (1.5, 1)], end=1.75, input_tokens=40)
    m = pipeline.collect()
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).sum == 0.5
    assert point(m, semconv.TIME_PER_OUTPUT_TOKEN).sum == (1.75 - 0.5) / 3
    assert point(m, semconv.REQUEST_DURATION).sum == 1.75
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == 4
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "input"}).sum == 40


def test_inter_token_distribution_counts_every_gap(pipeline: Pipeline) -> None:
    arrivals = [0.5, 0.503, 0.52, 0.63, 1.83]
    play(pipeline, [(t, 1) for t in arrivals], end=2.0)
    itl = point(pipeline.collect(), semconv.INTER_TOKEN_LATENCY)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]  # 3 ms, 17 ms, 110 ms, 1.2 s
    assert itl.count == 4  # output tokens - 1
    assert itl.sum == pytest.approx(sum(gaps))
    assert list(itl.bucket_counts) == bucket_counts(ITL_BOUNDS, [(g, 1) for g in gaps])
    assert list(itl.explicit_bounds) == list(ITL_BOUNDS)
    assert sum(1 for c in itl.bucket_counts if c) == 4, "the gaps fall in four distinct buckets"
    assert itl.min == min(gaps) and itl.max == max(gaps)


def test_a_chunk_of_n_tokens_counts_n_times_at_gap_over_n(pipeline: Pipeline) -> None:
    # First chunk carries 3 tokens (2 arrive with no gap), the next carries 4 over 0.2 s: 4 x 0.05.
    play(pipeline, [(0.5, 3), (0.7, 4)], end=0.7)
    m = pipeline.collect()
    itl = point(m, semconv.INTER_TOKEN_LATENCY)
    assert itl.count == 6 == 3 + 4 - 1
    assert list(itl.bucket_counts) == bucket_counts(ITL_BOUNDS, [(0.0, 2), (0.05, 4)])
    assert itl.sum == pytest.approx(0.2)
    assert point(m, semconv.TIME_PER_OUTPUT_TOKEN).sum == pytest.approx(0.2 / 6)


def test_tokens_measured_later_keep_the_time_they_arrived(pipeline: Pipeline) -> None:
    # The sidecar relays a chunk first and measures it after, passing the clock reading taken when it arrived.
    pipeline.clock.now = 0.0
    rec = pipeline.metrics.request(MODEL)
    for arrived, n in [(0.5, 1), (0.75, 2), (1.0, 1)]:
        pipeline.clock.now = arrived + 0.3  # measured well after the arrival
        rec.tokens(n, at=arrived)
    pipeline.clock.now = 1.5
    rec.finish()
    m = pipeline.collect()
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).sum == 0.5
    itl = point(m, semconv.INTER_TOKEN_LATENCY)
    assert itl.count == 3 and itl.sum == pytest.approx(0.5)
    assert (itl.min, itl.max) == (0.125, 0.25)  # 0.25 s over 2 tokens, then 0.25 s over 1
    assert point(m, semconv.REQUEST_DURATION).sum == 1.5


def test_zero_token_chunks_change_nothing(pipeline: Pipeline) -> None:
    play(pipeline, [(0.25, 0), (0.5, 1), (0.6, 0), (0.75, 1)], end=1.0)
    m = pipeline.collect()
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).sum == 0.5
    assert point(m, semconv.INTER_TOKEN_LATENCY).sum == pytest.approx(0.25)


def test_usage_wins_over_counted_tokens(pipeline: Pipeline) -> None:
    pipeline.clock.now = 0.0
    rec = pipeline.metrics.request(MODEL)
    pipeline.clock.now = 0.5
    rec.tokens()
    pipeline.clock.now = 1.5
    rec.tokens()
    rec.usage(input_tokens=7, output_tokens=11)
    rec.finish()
    m = pipeline.collect()
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == 11
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "input"}).sum == 7
    assert point(m, semconv.TIME_PER_OUTPUT_TOKEN).sum == pytest.approx(1.0 / 10)


def test_empty_request_has_no_ttft_and_no_gaps(pipeline: Pipeline) -> None:
    play(pipeline, [], end=0.25)
    m = pipeline.collect()
    assert semconv.TIME_TO_FIRST_TOKEN not in m
    assert semconv.INTER_TOKEN_LATENCY not in m
    assert point(m, semconv.REQUEST_DURATION).sum == 0.25


def test_context_manager_records_error_type_and_finishes_once(pipeline: Pipeline) -> None:
    with pytest.raises(TimeoutError), pipeline.metrics.request(MODEL) as rec:
        rec.tokens()
        raise TimeoutError
    rec.finish()  # a second finish does nothing
    durations = point(pipeline.collect(), semconv.REQUEST_DURATION, **{semconv.ERROR_TYPE: "TimeoutError"})
    assert durations.count == 1


def test_cancellation_is_recorded_as_cancelled(pipeline: Pipeline) -> None:
    async def consume() -> None:
        with pipeline.metrics.request(MODEL) as rec:
            rec.tokens()
            await asyncio.sleep(10)

    async def main() -> None:
        task = asyncio.create_task(consume())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert point(pipeline.collect(), semconv.REQUEST_DURATION, **{semconv.ERROR_TYPE: CANCELLED}).count == 1


def test_decorators_for_sync_and_async_generators(pipeline: Pipeline) -> None:
    clock = pipeline.clock

    @instrument(pipeline.metrics, attributes=MODEL, attributes_of=lambda tier: {semconv.USER_TIER: tier})
    def sync_gen(tier: str) -> Iterator[str]:
        for t in (0.5, 1.0):
            clock.now = t
            yield "tok"
        clock.now = 1.25

    @instrument(pipeline.metrics, attributes=MODEL, count_tokens=len)
    async def async_gen() -> object:
        for t in (0.25, 0.75):
            clock.now = t
            yield "ab"

    clock.now = 0.0
    assert list(sync_gen("vip")) == ["tok", "tok"]

    async def drain() -> list[str]:
        return [x async for x in async_gen()]

    clock.now = 0.0
    assert asyncio.run(drain()) == ["ab", "ab"]
    m = pipeline.collect()
    assert point(m, semconv.TIME_TO_FIRST_TOKEN, **{semconv.USER_TIER: "vip"}).sum == 0.5
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output", semconv.USER_TIER: "vip"}).sum == 2
    untiered = [dp for dp in m[semconv.TIME_TO_FIRST_TOKEN].data.data_points if semconv.USER_TIER not in dp.attributes]
    assert [dp.sum for dp in untiered] == [0.25]


def test_decorator_refuses_plain_functions(pipeline: Pipeline) -> None:
    with pytest.raises(TypeError, match="generator functions"):
        instrument(pipeline.metrics)(lambda: None)


def test_only_allowlisted_attributes_reach_metrics(pipeline: Pipeline) -> None:
    play(pipeline, [(0.5, 1)], end=1.0, user_id="alice", request_id="r-1")
    pipeline.clock.now = 0.0
    rec = pipeline.metrics.request({**MODEL, "user.id": "alice", "http.route": "/v1/chat"})
    rec.finish()
    m = pipeline.collect()
    for metric in m.values():
        for dp in metric.data.data_points:
            assert set(dp.attributes) <= set(semconv.METRIC_ATTRIBUTES), dp.attributes
            assert "alice" not in dp.attributes.values()
    assert pipeline.metrics.policy.dropped == {"user.id": 1, "http.route": 1}


def test_process_attributes_apply_to_every_request() -> None:
    p = Pipeline(attributes={semconv.GPU_TYPE: "H100", "pod.name": "x-1"})
    try:
        play(p, [(0.5, 1)], end=1.0)
        dp = point(p.collect(), semconv.TIME_TO_FIRST_TOKEN)
        assert dp.attributes == {**MODEL, semconv.GPU_TYPE: "H100"}
    finally:
        p.close()


def spans_pipeline(hasher: UserIdHasher | None) -> tuple[TokenMetrics, Pipeline, InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    pipeline = Pipeline(tracer_provider=tracer_provider, spans=True, user_id_hasher=hasher)
    pipeline.metrics.clock = time.perf_counter  # real time: spans need real timestamps
    return pipeline.metrics, pipeline, spans


def test_span_carries_ttft_tokens_hashed_user_and_request_id() -> None:
    hasher = UserIdHasher(b"k" * 32)
    metrics, _, spans = spans_pipeline(hasher)
    with (
        pytest.raises(ValueError),
        metrics.request({**MODEL, semconv.USER_TIER: "vip"}, user_id="alice", request_id="r-9") as rec,
    ):
        rec.tokens(2)
        rec.usage(input_tokens=5)
        raise ValueError("boom")
    (span,) = spans.get_finished_spans()
    assert span.name == "chat m-1"
    attrs = dict(span.attributes or {})
    assert attrs[semconv.USER_ID_HASH] == hasher("alice") and "alice" not in attrs.values()
    assert attrs[semconv.REQUEST_ID] == "r-9"
    assert attrs[semconv.USER_TIER] == "vip"
    assert attrs["gen_ai.usage.output_tokens"] == 2 and attrs["gen_ai.usage.input_tokens"] == 5
    assert attrs["gen_ai.response.time_to_first_chunk"] >= 0
    assert attrs[semconv.ERROR_TYPE] == "ValueError"
    assert span.status.status_code.name == "ERROR"
    assert span.end_time is not None and span.start_time is not None and span.end_time >= span.start_time


def test_without_a_key_user_ids_are_dropped_not_hashed() -> None:
    metrics, _, spans = spans_pipeline(None)
    metrics.request(MODEL, user_id="alice").finish()
    (span,) = spans.get_finished_spans()
    assert semconv.USER_ID_HASH not in (span.attributes or {})
    assert "alice" not in (span.attributes or {}).values()


def test_exemplars_carry_the_request_span_trace_id() -> None:
    metrics, pipeline, spans = spans_pipeline(None)
    rec = metrics.request(MODEL)
    rec.tokens()
    rec.tokens()
    rec.finish()
    (span,) = spans.get_finished_spans()
    collected = pipeline.collect()
    found = {name: [e.trace_id for dp in m.data.data_points for e in dp.exemplars] for name, m in collected.items()}
    for name in (semconv.TIME_TO_FIRST_TOKEN, semconv.TIME_PER_OUTPUT_TOKEN, semconv.REQUEST_DURATION):
        assert found[name] == [span.context.trace_id], name
    assert {e.span_id for m in collected.values() for dp in m.data.data_points for e in dp.exemplars} == {
        span.context.span_id
    }


def test_no_exemplars_without_a_sampled_span(pipeline: Pipeline) -> None:
    play(pipeline, [(0.5, 1), (0.75, 1)], end=1.0)
    assert not [e for m in pipeline.collect().values() for dp in m.data.data_points for e in dp.exemplars]


def test_exponential_index_matches_the_otlp_definition() -> None:
    index = exponential_index(EXPONENTIAL_SCALE)
    base = 2 ** (2**-EXPONENTIAL_SCALE)
    for value in (0.001, 0.0123, 0.5, 1.0, 3.7, 90.0):
        i = index(value)
        assert base**i < value <= base ** (i + 1) * (1 + 1e-12), (value, i)
    assert index(1.0) == -1  # (2**(-1/8), 1]
    assert index(0.0) == ZERO


def test_exponential_mode_exports_an_exponential_histogram() -> None:
    p = Pipeline(exponential=True)
    try:
        play(p, [(0.5, 2), (0.51, 1), (0.61, 1)], end=1.0)
        metric = p.collect()[semconv.INTER_TOKEN_LATENCY]
        (dp,) = metric.data.data_points
        assert isinstance(dp, ExponentialHistogramDataPoint)
        assert dp.scale == EXPONENTIAL_SCALE and dp.count == 3 and dp.zero_count == 1
        index = exponential_index()
        positive = {dp.positive.offset + i: c for i, c in enumerate(dp.positive.bucket_counts) if c}
        assert positive == {index(0.01): 1, index(0.1): 1}
        assert math.isclose(dp.sum, 0.11)
    finally:
        p.close()


def test_warns_when_nothing_would_be_exported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="tokenlat"):
        TokenMetrics(MeterProvider(metric_readers=[InMemoryMetricReader()]))
    assert "no TokenlatMetricExporter" in caplog.text


def test_dropped_attributes_are_exported_as_a_counter(pipeline: Pipeline) -> None:
    pipeline.metrics.request({**MODEL, "http.route": "/x", "pod": "p-1"}).finish()
    (point,) = pipeline.collect()[DROPPED_ATTRIBUTES].data.data_points
    assert point.value == 2


def test_cut_attribute_values_are_exported_as_a_counter(pipeline: Pipeline) -> None:
    long_model = {semconv.GEN_AI_REQUEST_MODEL: "m" * 1000}
    pipeline.metrics.request(long_model).finish()
    metrics = pipeline.collect()
    (point,) = metrics[TRUNCATED_ATTRIBUTES].data.data_points
    assert point.value == 1
    (duration,) = metrics[semconv.REQUEST_DURATION].data.data_points
    assert len(duration.attributes[semconv.GEN_AI_REQUEST_MODEL]) == MAX_VALUE_CHARS


def test_the_overflow_counter_is_one_of_the_process_counters() -> None:
    """The store counts overflowed requests into the counter ``count`` hands out under that name: one per name."""
    p = Pipeline(max_attribute_sets=1)
    try:
        assert p.metrics.count(ATTRIBUTE_OVERFLOW, "{request}", "") is p.metrics.count(ATTRIBUTE_OVERFLOW, "", "")
        for model in ("a", "b", "c"):
            p.metrics.request({semconv.GEN_AI_REQUEST_MODEL: model}).finish()
        (point,) = p.collect()[ATTRIBUTE_OVERFLOW].data.data_points
        assert point.value == 2 == p.metrics.store.overflowed_requests
    finally:
        p.close()


def test_exponential_scale_sets_the_resolution() -> None:
    p = Pipeline(exponential=True, exponential_scale=8)
    try:
        play(p, [(0.5, 1), (0.51, 1)], end=1.0)
        (dp,) = p.collect()[semconv.INTER_TOKEN_LATENCY].data.data_points
        assert dp.scale == 8
        assert {dp.positive.offset + i for i, c in enumerate(dp.positive.bucket_counts) if c} == {
            exponential_index(8)(0.51 - 0.5)
        }
    finally:
        p.close()
    with pytest.raises(ValueError, match="between -4 and 8"):
        TokenMetrics(exponential=True, exponential_scale=9)
