"""Tests for tokenlat.stream and tokenlat.semconv against an in-memory OTel SDK pipeline.

Times are multiples of 1/4 s so every expected value is exact in binary floating point.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import HistogramDataPoint, Metric

import tokenlat
from tests.otel_helpers import Pipeline
from tokenlat import semconv
from tokenlat.buckets import BucketLayout
from tokenlat.stream import (
    RequestTiming,
    TokenMetrics,
    instrument_stream,
    wrap_async_stream,
    wrap_stream,
)

ATTRS = {
    semconv.GEN_AI_OPERATION_NAME: "chat",
    semconv.GEN_AI_PROVIDER_NAME: "openai",
    semconv.GEN_AI_REQUEST_MODEL: "m-1",
}


class FakeClock:
    """A clock whose time the fake upstream stream sets before each item."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@dataclass(frozen=True)
class Chunk:
    text: str
    tokens: int


def count(chunk: Chunk) -> int:
    return chunk.tokens


# (time the chunk arrives, chunk); the stream ends at END.
SCRIPT: list[tuple[float, Chunk]] = [
    (0.25, Chunk("", 0)),  # role-only chunk: no tokens, must not set the first-token time
    (0.5, Chunk("Hel", 1)),
    (0.75, Chunk("lo", 1)),
    (1.0, Chunk(", wor", 2)),
    (1.25, Chunk("ld", 1)),
    (1.375, Chunk("", 0)),  # usage-only trailer
]
END = 1.5
INPUT_TOKENS = 100
# Expected: TTFT 0.5, duration 1.5, 5 output tokens, TPOT (1.5 - 0.5) / 4 = 0.25.


def upstream(clock: FakeClock, script: Sequence[tuple[float, Any]], end: float) -> Iterator[Any]:
    for t, item in script:
        clock.now = t
        yield item
    clock.now = end


async def aupstream(clock: FakeClock, script: Sequence[tuple[float, Any]], end: float) -> AsyncIterator[Any]:
    for t, item in script:
        await asyncio.sleep(0)  # a real suspension point, like awaiting the network
        clock.now = t
        yield item
    clock.now = end


class Upstream:
    class Broken(Exception):
        """Nested so that its __qualname__ ("Upstream.Broken") differs from __name__."""


@pytest.fixture
def pipeline() -> Iterator[tuple[TokenMetrics, Pipeline]]:
    # A private MeterProvider exporting through TokenlatMetricExporter, never the global one. The conventions'
    # buckets, so that the expected bucket of each value below can be read off semconv.py.
    p = Pipeline(buckets=BucketLayout.semconv())
    yield p.metrics, p
    p.close()


def collect(reader: Pipeline) -> dict[str, Metric]:
    return {name: m for name, m in reader.collect().items() if name in {s.name for s in semconv.ALL_METRICS}}


def points(reader: Pipeline) -> dict[str, list[HistogramDataPoint]]:
    return {name: list(m.data.data_points) for name, m in collect(reader).items()}


def only(pts: list[HistogramDataPoint]) -> HistogramDataPoint:
    assert len(pts) == 1, pts
    return pts[0]


def usage_by_type(pts: list[HistogramDataPoint]) -> dict[str, HistogramDataPoint]:
    return {str(p.attributes[semconv.GEN_AI_TOKEN_TYPE]): p for p in pts}


def one_hot(n_bounds: int, index: int) -> list[int]:
    counts = [0] * (n_bounds + 1)
    counts[index] = 1
    return counts


def run_sync(metrics: TokenMetrics, clock: FakeClock) -> list[Chunk]:
    stream = wrap_stream(
        upstream(clock, SCRIPT, END),
        metrics,
        attributes=ATTRS,
        input_tokens=INPUT_TOKENS,
        count_tokens=count,
        clock=clock,
        start=0.0,
    )
    return list(stream)


async def run_async(metrics: TokenMetrics, clock: FakeClock) -> list[Chunk]:
    stream = wrap_async_stream(
        aupstream(clock, SCRIPT, END),
        metrics,
        attributes=ATTRS,
        input_tokens=INPUT_TOKENS,
        count_tokens=count,
        clock=clock,
        start=0.0,
    )
    return [item async for item in stream]


# --- the happy path -------------------------------------------------------------------------


def test_items_pass_through_unchanged(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, _ = pipeline
    got = run_sync(metrics, FakeClock())
    expected = [chunk for _, chunk in SCRIPT]
    assert len(got) == len(expected)
    assert all(a is b for a, b in zip(got, expected, strict=True))


def test_exact_values_and_buckets(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, reader = pipeline
    run_sync(metrics, FakeClock())
    pts = points(reader)

    ttft = only(pts[semconv.TIME_TO_FIRST_TOKEN])
    assert (ttft.count, ttft.sum, ttft.min, ttft.max) == (1, 0.5, 0.5, 0.5)
    assert list(ttft.explicit_bounds) == list(semconv.TTFT_BUCKETS)
    assert list(ttft.bucket_counts) == one_hot(len(semconv.TTFT_BUCKETS), 9)  # (0.25, 0.5]
    assert dict(ttft.attributes) == ATTRS

    tpot = only(pts[semconv.TIME_PER_OUTPUT_TOKEN])
    assert (tpot.count, tpot.sum) == (1, 0.25)
    assert list(tpot.explicit_bounds) == list(semconv.TPOT_BUCKETS)
    assert list(tpot.bucket_counts) == one_hot(len(semconv.TPOT_BUCKETS), 7)  # (0.2, 0.3]
    assert dict(tpot.attributes) == ATTRS

    dur = only(pts[semconv.REQUEST_DURATION])
    assert (dur.count, dur.sum) == (1, 1.5)
    assert list(dur.explicit_bounds) == list(semconv.DURATION_BUCKETS)
    assert list(dur.bucket_counts) == one_hot(len(semconv.DURATION_BUCKETS), 8)  # (1.28, 2.56]
    assert dict(dur.attributes) == ATTRS  # success: no error.type

    usage = usage_by_type(pts[semconv.TOKEN_USAGE])
    assert set(usage) == {"input", "output"}
    assert (usage["input"].count, usage["input"].sum) == (1, INPUT_TOKENS)
    assert (usage["output"].count, usage["output"].sum) == (1, 5)
    for p in usage.values():
        assert list(p.explicit_bounds) == list(semconv.TOKEN_USAGE_BUCKETS)
    assert list(usage["input"].bucket_counts) == one_hot(len(semconv.TOKEN_USAGE_BUCKETS), 4)  # (64, 256]
    assert list(usage["output"].bucket_counts) == one_hot(len(semconv.TOKEN_USAGE_BUCKETS), 2)  # (4, 16]
    assert dict(usage["input"].attributes) == {**ATTRS, semconv.GEN_AI_TOKEN_TYPE: "input"}


@pytest.mark.parametrize("layout", [BucketLayout(), BucketLayout.semconv()], ids=["default", "semconv"])
def test_boundaries_are_the_layouts_not_sdk_default(layout: BucketLayout) -> None:
    reader = Pipeline(**({} if layout == BucketLayout() else {"buckets": layout}))
    try:
        run_sync(reader.metrics, FakeClock())
        collected = collect(reader)
    finally:
        reader.close()
    assert set(collected) == {spec.name for spec in semconv.ALL_METRICS}
    sdk_default = (0.0, 5.0, 10.0, 25.0, 50.0, 75.0, 100.0, 250.0, 500.0, 750.0, 1000.0)
    for spec in semconv.ALL_METRICS:
        m = collected[spec.name]
        assert (m.unit, m.description) == (spec.unit, spec.description)
        for p in m.data.data_points:
            assert tuple(p.explicit_bounds) == layout.bounds(spec.name)
            assert tuple(p.explicit_bounds[: len(sdk_default)]) != sdk_default


def test_zero_token_chunks_do_not_count(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    script = [(0.25, Chunk("", 0)), (0.5, Chunk("", 0)), (0.75, Chunk("a", 1)), (1.0, Chunk("", 0))]
    list(wrap_stream(upstream(clock, script, 1.25), metrics, count_tokens=count, clock=clock, start=0.0))
    pts = points(reader)
    assert only(pts[semconv.TIME_TO_FIRST_TOKEN]).sum == 0.75  # not 0.25: empty chunks are not tokens
    assert usage_by_type(pts[semconv.TOKEN_USAGE])["output"].sum == 1


def test_only_zero_token_chunks_record_no_ttft(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    script = [(0.25, Chunk("", 0)), (0.5, Chunk("", 0))]
    list(wrap_stream(upstream(clock, script, 0.75), metrics, count_tokens=count, clock=clock, start=0.0))
    pts = points(reader)
    assert semconv.TIME_TO_FIRST_TOKEN not in pts
    assert semconv.TIME_PER_OUTPUT_TOKEN not in pts
    assert only(pts[semconv.REQUEST_DURATION]).sum == 0.75


def test_default_counts_one_token_per_item(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    script = [(0.25, "a"), (0.5, "b"), (1.0, "c")]
    list(wrap_stream(upstream(clock, script, 1.25), metrics, clock=clock, start=0.0))
    pts = points(reader)
    assert usage_by_type(pts[semconv.TOKEN_USAGE])["output"].sum == 3
    assert only(pts[semconv.TIME_TO_FIRST_TOKEN]).sum == 0.25
    assert only(pts[semconv.TIME_PER_OUTPUT_TOKEN]).sum == 0.5  # (1.25 - 0.25) / 2


def test_empty_stream_records_duration_and_zero_output_only(
    pipeline: tuple[TokenMetrics, Pipeline],
) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    assert list(wrap_stream(upstream(clock, [], 0.5), metrics, clock=clock, start=0.0)) == []
    pts = points(reader)
    assert semconv.TIME_TO_FIRST_TOKEN not in pts
    assert semconv.TIME_PER_OUTPUT_TOKEN not in pts
    dur = only(pts[semconv.REQUEST_DURATION])
    assert (dur.count, dur.sum) == (1, 0.5)
    usage = usage_by_type(pts[semconv.TOKEN_USAGE])
    assert set(usage) == {"output"}  # input_tokens unknown: no input point
    assert (usage["output"].count, usage["output"].sum) == (1, 0)


def test_single_token_has_ttft_but_no_tpot(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    list(wrap_stream(upstream(clock, [(0.25, "only")], 0.5), metrics, clock=clock, start=0.0))
    pts = points(reader)
    assert only(pts[semconv.TIME_TO_FIRST_TOKEN]).sum == 0.25
    assert semconv.TIME_PER_OUTPUT_TOKEN not in pts
    assert only(pts[semconv.REQUEST_DURATION]).sum == 0.5


def test_start_defaults_to_clock_at_call_not_first_next(
    pipeline: tuple[TokenMetrics, Pipeline],
) -> None:
    metrics, reader = pipeline
    clock = FakeClock(10.0)
    stream = wrap_stream(upstream(clock, [(10.5, "a")], 11.0), metrics, clock=clock)
    clock.now = 10.25  # time passes before the consumer starts iterating
    list(stream)
    pts = points(reader)
    assert only(pts[semconv.TIME_TO_FIRST_TOKEN]).sum == 0.5
    assert only(pts[semconv.REQUEST_DURATION]).sum == 1.0


# --- errors and cancellation ----------------------------------------------------------------


def failing(clock: FakeClock) -> Iterator[str]:
    clock.now = 0.25
    yield "a"
    clock.now = 0.5
    yield "b"
    clock.now = 0.75
    raise Upstream.Broken("connection reset")


def test_exception_records_error_type_and_reraises(
    pipeline: tuple[TokenMetrics, Pipeline],
) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    got: list[str] = []
    with pytest.raises(Upstream.Broken, match="connection reset"):
        for item in wrap_stream(failing(clock), metrics, attributes=ATTRS, clock=clock, start=0.0):
            got.append(item)
    assert got == ["a", "b"]
    pts = points(reader)
    dur = only(pts[semconv.REQUEST_DURATION])
    assert dict(dur.attributes) == {**ATTRS, semconv.ERROR_TYPE: "Upstream.Broken"}
    assert dur.sum == 0.75
    # error.type goes on duration only; the other metrics keep the plain attributes
    assert dict(only(pts[semconv.TIME_TO_FIRST_TOKEN]).attributes) == ATTRS
    assert usage_by_type(pts[semconv.TOKEN_USAGE])["output"].sum == 2


def test_sync_close_after_two_items_records_cancelled(
    pipeline: tuple[TokenMetrics, Pipeline],
) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    upstream_closed = False

    def source() -> Iterator[str]:
        nonlocal upstream_closed
        try:
            for t, item in [(0.25, "a"), (0.5, "b"), (0.75, "c")]:
                clock.now = t
                yield item
        finally:
            upstream_closed = True

    src = source()  # held here, so only an explicit close() (not GC) can finish it
    stream = wrap_stream(src, metrics, attributes=ATTRS, clock=clock, start=0.0)
    assert [next(stream), next(stream)] == ["a", "b"]
    clock.now = 1.0
    stream.close()  # type: ignore[attr-defined]
    stream.close()  # type: ignore[attr-defined]  # a second close must not record again
    assert upstream_closed  # the close is propagated upstream, like `yield from`
    pts = points(reader)
    dur = only(pts[semconv.REQUEST_DURATION])
    assert dur.count == 1
    assert dur.sum == 1.0
    assert dur.attributes[semconv.ERROR_TYPE] == "cancelled"
    assert only(pts[semconv.TIME_PER_OUTPUT_TOKEN]).sum == 0.75  # (1.0 - 0.25) / 1
    output = usage_by_type(pts[semconv.TOKEN_USAGE])["output"]
    assert (output.count, output.sum) == (1, 2)


def test_records_exactly_once_when_closed_after_exhaustion(
    pipeline: tuple[TokenMetrics, Pipeline],
) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    stream = wrap_stream(upstream(clock, [(0.25, "a")], 0.5), metrics, clock=clock, start=0.0)
    list(stream)
    stream.close()  # type: ignore[attr-defined]
    stream.close()  # type: ignore[attr-defined]
    dur = only(points(reader)[semconv.REQUEST_DURATION])
    assert dur.count == 1
    assert semconv.ERROR_TYPE not in dur.attributes  # it finished; closing later is not a cancel


def test_async_task_cancellation_records_cancelled(
    pipeline: tuple[TokenMetrics, Pipeline],
) -> None:
    metrics, reader = pipeline
    clock = FakeClock()

    async def source() -> AsyncIterator[str]:
        for t, item in [(0.25, "a"), (0.5, "b")]:
            clock.now = t
            yield item
        await asyncio.Event().wait()  # the server stalls forever

    async def main() -> list[str]:
        got: list[str] = []
        two = asyncio.Event()

        async def consume() -> None:
            async for item in wrap_async_stream(source(), metrics, attributes=ATTRS, clock=clock, start=0.0):
                got.append(item)
                if len(got) == 2:
                    two.set()

        task = asyncio.create_task(consume())
        await two.wait()
        await asyncio.sleep(0)  # let the consumer block on the stalled upstream
        clock.now = 2.0
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return got

    assert asyncio.run(main()) == ["a", "b"]
    pts = points(reader)
    dur = only(pts[semconv.REQUEST_DURATION])
    assert (dur.count, dur.sum) == (1, 2.0)
    assert dur.attributes[semconv.ERROR_TYPE] == "cancelled"
    assert usage_by_type(pts[semconv.TOKEN_USAGE])["output"].sum == 2


def test_async_aclose_records_cancelled_once(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, reader = pipeline
    clock = FakeClock()

    async def main() -> list[str]:
        script = [(0.25, "a"), (0.5, "b"), (0.75, "c")]
        stream = wrap_async_stream(aupstream(clock, script, 1.0), metrics, clock=clock, start=0.0)
        got = [await anext(stream), await anext(stream)]
        clock.now = 1.25
        await stream.aclose()  # type: ignore[attr-defined]
        await stream.aclose()  # type: ignore[attr-defined]
        return got

    assert asyncio.run(main()) == ["a", "b"]
    dur = only(points(reader)[semconv.REQUEST_DURATION])
    assert (dur.count, dur.sum) == (1, 1.25)
    assert dur.attributes[semconv.ERROR_TYPE] == "cancelled"


def test_async_exception_records_error_type(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, reader = pipeline
    clock = FakeClock()

    async def source() -> AsyncIterator[str]:
        clock.now = 0.25
        yield "a"
        clock.now = 0.5
        raise Upstream.Broken

    async def main() -> None:
        async for _ in wrap_async_stream(source(), metrics, clock=clock, start=0.0):
            pass

    with pytest.raises(Upstream.Broken):
        asyncio.run(main())
    dur = only(points(reader)[semconv.REQUEST_DURATION])
    assert (dur.sum, dict(dur.attributes)) == (0.5, {semconv.ERROR_TYPE: "Upstream.Broken"})


def test_async_gives_same_numbers_as_sync() -> None:
    def snapshot(reader: Pipeline) -> dict[tuple[str, tuple[Any, ...]], tuple[Any, ...]]:
        return {
            (name, tuple(sorted(p.attributes.items()))): (
                p.count,
                p.sum,
                p.min,
                p.max,
                tuple(p.bucket_counts),
            )
            for name, pts in points(reader).items()
            for p in pts
        }

    sync_reader, async_reader = Pipeline(), Pipeline()
    try:
        sync_items = run_sync(sync_reader.metrics, FakeClock())
        async_items = asyncio.run(run_async(async_reader.metrics, FakeClock()))
        assert async_items == sync_items
        sync_snap = snapshot(sync_reader)
        assert len(sync_snap) == 6  # ttft, tpot, duration, usage input + output, inter-token latency
        assert snapshot(async_reader) == sync_snap
    finally:
        sync_reader.close()
        async_reader.close()


def test_instrument_stream_dispatches_on_aiter(pipeline: tuple[TokenMetrics, Pipeline]) -> None:
    metrics, reader = pipeline
    clock = FakeClock()
    sync_stream = instrument_stream(["a", "b"], metrics, clock=clock, start=0.0)
    assert isinstance(sync_stream, Iterator)
    assert list(sync_stream) == ["a", "b"]

    async def main() -> list[str]:
        async_stream = instrument_stream(aupstream(clock, [(0.25, "c")], 0.5), metrics, clock=clock, start=0.0)
        assert isinstance(async_stream, AsyncIterator)
        assert not isinstance(async_stream, Iterator)
        return [item async for item in async_stream]

    assert asyncio.run(main()) == ["c"]
    assert only(points(reader)[semconv.REQUEST_DURATION]).count == 2


# --- the data model and the contract --------------------------------------------------------


def test_request_timing_properties() -> None:
    t = RequestTiming(start=1.0)
    assert (t.ttft, t.duration, t.time_per_output_token) == (None, None, None)
    t = RequestTiming(start=1.0, first_token=1.5, end=3.5, output_tokens=5)
    assert (t.ttft, t.duration, t.time_per_output_token) == (0.5, 2.5, 0.5)
    t = RequestTiming(start=1.0, first_token=1.5, end=3.5, output_tokens=1)
    assert t.time_per_output_token is None


def test_histograms_contract() -> None:
    assert [s.name for s in semconv.HISTOGRAMS] == [
        "gen_ai.server.time_to_first_token",
        "gen_ai.server.time_per_output_token",
        "gen_ai.server.request.duration",
        "gen_ai.client.token.usage",
    ]
    assert [s.unit for s in semconv.HISTOGRAMS] == ["s", "s", "s", "{token}"]
    for spec in semconv.HISTOGRAMS:
        assert list(spec.buckets) == sorted(set(spec.buckets)), spec.name  # strictly increasing
        assert all(isinstance(b, float) for b in spec.buckets)
    assert semconv.TTFT_BUCKETS[15:] == (10.0, 15.0, 30.0, 60.0, 120.0)
    assert len(semconv.TTFT_BUCKETS) == 20
    assert len(semconv.TPOT_BUCKETS) == 13
    assert semconv.DURATION_BUCKETS[:14] == (
        0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    )  # fmt: skip
    assert semconv.DURATION_BUCKETS[13:] == (81.92, 163.84, 327.68, 655.36)
    assert semconv.TOKEN_USAGE_BUCKETS == (
        1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
    )  # fmt: skip
    with pytest.raises(AttributeError):
        semconv.TTFT_SPEC.name = "x"  # type: ignore[misc]


def test_prometheus_names() -> None:
    assert [semconv.prometheus_name(s) for s in semconv.HISTOGRAMS] == [
        "gen_ai_server_time_to_first_token_seconds",
        "gen_ai_server_time_per_output_token_seconds",
        "gen_ai_server_request_duration_seconds",
        "gen_ai_client_token_usage",
    ]


def test_package_reexports() -> None:
    assert {"TokenMetrics", "configure", "instrument", "instrument_stream", "wrap_stream"} <= set(tokenlat.__all__)
    assert all(hasattr(tokenlat, name) for name in tokenlat.__all__)
    assert tokenlat.wrap_stream is wrap_stream
    assert tokenlat.TokenMetrics is TokenMetrics
