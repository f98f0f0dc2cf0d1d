"""Wrap an LLM token stream and record its latency metrics once per request.

The wrappers pass every item through unchanged and, per item, do only two things: add the
item's token count and note the time of the first token. Everything OpenTelemetry (building
attribute dicts, four ``Histogram.record`` calls) happens once, when the stream ends. The
per-item path is sacred: it runs once per token, and a ``Histogram.record`` costs
microseconds -- the same order as the inter-token latency we are trying to measure.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import TypeVar, overload

from opentelemetry.metrics import Histogram, MeterProvider, get_meter_provider
from opentelemetry.util.types import AttributeValue

from tokenlat import semconv

T = TypeVar("T")

Clock = Callable[[], float]
Attributes = Mapping[str, AttributeValue]

# error.type for a request the consumer abandoned (close(), aclose(), task cancellation).
CANCELLED = "cancelled"


@dataclass
class RequestTiming:
    """Clock readings and token counts of one request; derived values are None where undefined."""

    start: float
    first_token: float | None = None
    end: float | None = None
    output_tokens: int = 0
    input_tokens: int | None = None
    error_type: str | None = None

    @property
    def ttft(self) -> float | None:
        if self.first_token is None:
            return None
        return self.first_token - self.start

    @property
    def duration(self) -> float | None:
        if self.end is None:
            return None
        return self.end - self.start

    @property
    def time_per_output_token(self) -> float | None:
        # The conventions' server definition: time after the first token spread over the
        # tokens after the first one -- so it needs at least two tokens.
        ttft, duration = self.ttft, self.duration
        if ttft is None or duration is None or self.output_tokens < 2:
            return None
        return (duration - ttft) / (self.output_tokens - 1)


class TokenMetrics:
    """The four GenAI histograms, created once and shared by every wrapped stream."""

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        meter = provider.get_meter("tokenlat")

        def histogram(spec: semconv.MetricSpec) -> Histogram:
            # Advisory buckets: without them the SDK default (0..10000, tuned for ms) would
            # put nearly every latency in seconds into its first two buckets.
            return meter.create_histogram(
                spec.name,
                unit=spec.unit,
                description=spec.description,
                explicit_bucket_boundaries_advisory=spec.buckets,
            )

        self._ttft = histogram(semconv.TTFT_SPEC)
        self._tpot = histogram(semconv.TPOT_SPEC)
        self._duration = histogram(semconv.DURATION_SPEC)
        self._usage = histogram(semconv.TOKEN_USAGE_SPEC)

    def record(self, timing: RequestTiming, attributes: Attributes) -> None:
        """Record one finished request. Called once per request, off the per-token path."""
        ttft = timing.ttft
        if ttft is not None:
            self._ttft.record(ttft, attributes)
        tpot = timing.time_per_output_token
        if tpot is not None:
            self._tpot.record(tpot, attributes)
        duration = timing.duration
        if duration is not None:  # None only if record() is called before the request ended
            if timing.error_type is not None:
                self._duration.record(duration, {**attributes, semconv.ERROR_TYPE: timing.error_type})
            else:
                self._duration.record(duration, attributes)
        if timing.input_tokens is not None:
            self._usage.record(timing.input_tokens, {**attributes, semconv.GEN_AI_TOKEN_TYPE: semconv.TOKEN_TYPE_INPUT})
        self._usage.record(timing.output_tokens, {**attributes, semconv.GEN_AI_TOKEN_TYPE: semconv.TOKEN_TYPE_OUTPUT})


def wrap_stream(
    stream: Iterable[T],
    metrics: TokenMetrics,
    *,
    attributes: Attributes | None = None,
    input_tokens: int | None = None,
    count_tokens: Callable[[T], int] | None = None,
    clock: Clock = time.perf_counter,
    start: float | None = None,
) -> Iterator[T]:
    """Yield ``stream``'s items unchanged; record the request's metrics when it ends.

    ``start`` is when the request was sent (default: now). ``count_tokens(item)`` says how
    many tokens an item carries (default 1); items with 0 tokens neither count nor set the
    first-token time. A stream error is recorded as ``error.type`` = the exception's class
    name and re-raised; close() before the end is recorded as "cancelled". A stream that is
    never iterated records nothing.
    """
    # A plain function around the generator so that `start` is read at the call, when the
    # request goes out, not at the first next() -- generator bodies run lazily.
    timing = RequestTiming(start=clock() if start is None else start, input_tokens=input_tokens)
    return _wrap_sync(iter(stream), metrics, timing, dict(attributes or {}), count_tokens, clock)


def _wrap_sync(
    it: Iterator[T],
    metrics: TokenMetrics,
    timing: RequestTiming,
    attributes: Attributes,
    count_tokens: Callable[[T], int] | None,
    clock: Clock,
) -> Iterator[T]:
    tokens = 0
    error_type: str | None = None
    try:
        for item in it:
            # Hot path: one count and one comparison per item, nothing else.
            n = 1 if count_tokens is None else count_tokens(item)
            if n > 0:
                if tokens == 0:
                    timing.first_token = clock()
                tokens += n
            yield item
    except GeneratorExit:
        error_type = CANCELLED
        # Like `yield from`: release the upstream (e.g. its HTTP connection) now, not at GC.
        close = getattr(it, "close", None)
        if close is not None:
            close()
        raise
    except BaseException as e:
        error_type = type(e).__qualname__
        raise
    finally:
        # A generator's finally runs exactly once, however it ends: exhaustion, error,
        # close() (a second close() on a finished generator is a no-op) or GC.
        timing.end = clock()
        timing.output_tokens = tokens
        timing.error_type = error_type
        metrics.record(timing, attributes)


def wrap_async_stream(
    stream: AsyncIterable[T],
    metrics: TokenMetrics,
    *,
    attributes: Attributes | None = None,
    input_tokens: int | None = None,
    count_tokens: Callable[[T], int] | None = None,
    clock: Clock = time.perf_counter,
    start: float | None = None,
) -> AsyncIterator[T]:
    """The async twin of :func:`wrap_stream`; task cancellation and aclose() record "cancelled"."""
    timing = RequestTiming(start=clock() if start is None else start, input_tokens=input_tokens)
    return _wrap_async(aiter(stream), metrics, timing, dict(attributes or {}), count_tokens, clock)


async def _wrap_async(
    it: AsyncIterator[T],
    metrics: TokenMetrics,
    timing: RequestTiming,
    attributes: Attributes,
    count_tokens: Callable[[T], int] | None,
    clock: Clock,
) -> AsyncIterator[T]:
    tokens = 0
    error_type: str | None = None
    try:
        async for item in it:
            n = 1 if count_tokens is None else count_tokens(item)
            if n > 0:
                if tokens == 0:
                    timing.first_token = clock()
                tokens += n
            yield item
    except GeneratorExit:  # aclose() while suspended at `yield`
        error_type = CANCELLED
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
        raise
    except asyncio.CancelledError:  # the consuming task was cancelled while awaiting upstream
        error_type = CANCELLED
        raise
    except BaseException as e:
        error_type = type(e).__qualname__
        raise
    finally:
        timing.end = clock()
        timing.output_tokens = tokens
        timing.error_type = error_type
        metrics.record(timing, attributes)


@overload
def instrument_stream(
    stream: AsyncIterable[T],
    metrics: TokenMetrics,
    *,
    attributes: Attributes | None = ...,
    input_tokens: int | None = ...,
    count_tokens: Callable[[T], int] | None = ...,
    clock: Clock = ...,
    start: float | None = ...,
) -> AsyncIterator[T]: ...
@overload
def instrument_stream(
    stream: Iterable[T],
    metrics: TokenMetrics,
    *,
    attributes: Attributes | None = ...,
    input_tokens: int | None = ...,
    count_tokens: Callable[[T], int] | None = ...,
    clock: Clock = ...,
    start: float | None = ...,
) -> Iterator[T]: ...
def instrument_stream(
    stream: Iterable[T] | AsyncIterable[T],
    metrics: TokenMetrics,
    *,
    attributes: Attributes | None = None,
    input_tokens: int | None = None,
    count_tokens: Callable[[T], int] | None = None,
    clock: Clock = time.perf_counter,
    start: float | None = None,
) -> Iterator[T] | AsyncIterator[T]:
    """Wrap a sync or async stream, whichever ``stream`` is (async if it has ``__aiter__``)."""
    if hasattr(stream, "__aiter__"):
        return wrap_async_stream(
            stream,  # type: ignore[arg-type]
            metrics,
            attributes=attributes,
            input_tokens=input_tokens,
            count_tokens=count_tokens,
            clock=clock,
            start=start,
        )
    return wrap_stream(
        stream,  # type: ignore[arg-type]
        metrics,
        attributes=attributes,
        input_tokens=input_tokens,
        count_tokens=count_tokens,
        clock=clock,
        start=start,
    )
