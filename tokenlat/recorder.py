"""Recording one request's token latency: the explicit API every other integration is built on.

    metrics = TokenMetrics()                      # instruments, allowlist, user-id hashing, optional spans
    rec = metrics.request({"gen_ai.request.model": "qwen3-8b"}, user_id=uid, input_tokens=412)
    for chunk in engine.stream(prompt):
        rec.tokens(len(chunk.token_ids))          # hot path: a clock read, a bucket index, a dict update
    rec.finish()                                  # or finish(error=exc); a `with` block does it for you

Everything OpenTelemetry (attribute dicts, ``Histogram.record``, the span) happens once per request, in
``finish``: the per-token path is sacred, and a ``Histogram.record`` costs microseconds, the same order as the
gaps being measured. The full inter-token distribution is still exact: each request counts its gaps into
bucket keys and merges them once into ``InterTokenHistogram``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Mapping
from types import TracebackType

from opentelemetry import trace
from opentelemetry.metrics import CallbackOptions, MeterProvider, Observation, get_meter_provider
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from tokenlat import semconv
from tokenlat.attributes import AttributePolicy
from tokenlat.buckets import BucketLayout
from tokenlat.histograms import (
    ATTRIBUTE_OVERFLOW,
    DEFAULT_MAX_ATTRIBUTE_SETS,
    EXPONENTIAL_SCALE,
    MetricStore,
    RequestGaps,
)
from tokenlat.otel_sdk import attach_to_exporters
from tokenlat.privacy import UserIdHasher
from tokenlat.timing import RequestTiming

Clock = Callable[[], float]
Attributes = Mapping[str, AttributeValue]
logger = logging.getLogger("tokenlat")

DROPPED_ATTRIBUTES = "tokenlat.attributes.dropped"
TRUNCATED_ATTRIBUTES = "tokenlat.attributes.truncated"
# error.type for a request the consumer abandoned (client disconnect, close(), aclose(), task cancellation).
CANCELLED = "cancelled"


def error_type_of(error: BaseException | str) -> str:
    """error.type as the conventions want it: the exception's class name, or "cancelled" for abandonment."""
    if isinstance(error, str):
        return error
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return CANCELLED
    return type(error).__qualname__


class Count:
    """A monotonic count of events, exported by :meth:`TokenMetrics.count`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0

    def add(self, n: int = 1) -> None:
        self.value += n


class TokenMetrics:
    """The instruments and policies shared by every request of a process: create one, use it everywhere."""

    def __init__(
        self,
        meter_provider: MeterProvider | None = None,
        *,
        tracer_provider: TracerProvider | None = None,
        spans: bool = False,
        attributes: Attributes | None = None,
        policy: AttributePolicy | None = None,
        user_id_hasher: UserIdHasher | None = None,
        exponential: bool = False,
        exponential_scale: int = EXPONENTIAL_SCALE,
        buckets: BucketLayout | None = None,
        max_attribute_sets: int = DEFAULT_MAX_ATTRIBUTE_SETS,
        clock: Clock = time.perf_counter,
    ) -> None:
        """``max_attribute_sets``: each histogram's cap on distinct attribute sets (the SDK's cardinality limit,
        2,000 by default); observations with further sets go to one overflow set, ``otel.metric.overflow=true``,
        and their requests are counted in ``tokenlat.attributes.overflow`` (docs/metrics.md)."""
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        self.policy = policy if policy is not None else AttributePolicy()
        # Process-wide attributes (GPU type, quantization ...), filtered once.
        self.attributes = self.policy.filter(attributes or {})
        self.hasher = user_id_hasher
        self.clock = clock
        overflow = Count()
        self.store = MetricStore(
            exponential=exponential,
            scale=exponential_scale,
            layout=buckets,
            max_attribute_sets=max_attribute_sets,
            overflow_count=overflow,
        )
        # The SDK instruments are observed at collection, never on the request path. The dropped counter also
        # guarantees that every collection has SDK data, so the exporter is called and can carry the store's
        # histograms.
        self._meter = provider.get_meter("tokenlat")
        self._meter.create_observable_counter(
            DROPPED_ATTRIBUTES, [self._observe_dropped], unit="{attribute}",
            description="Attribute keys dropped by the metric attribute allowlist",
        )  # fmt: skip
        self._meter.create_observable_counter(
            TRUNCATED_ATTRIBUTES, [self._observe_truncated], unit="{attribute}",
            description="Attribute values cut to the allowlist's maximum length",
        )  # fmt: skip
        self._counters: dict[str, Count] = {}
        # Exported from the start, at 0, so that an alert on its increase needs no absent() case.
        self._export(
            ATTRIBUTE_OVERFLOW,
            "{request}",
            "Requests with an observation recorded into the overflow attribute set (otel.metric.overflow=true) "
            "because a metric had reached its cap of distinct attribute sets",
            overflow,
        )
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("tokenlat") if spans else None
        if not attach_to_exporters(provider, self.store):
            logger.warning(
                "tokenlat: no TokenlatMetricExporter behind this MeterProvider's readers, so tokenlat's histograms "
                "are not exported; use tokenlat.configure(), or wrap your exporter in tokenlat.TokenlatMetricExporter"
            )

    def _observe_dropped(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(sum(self.policy.dropped.values()))]

    def _observe_truncated(self, options: CallbackOptions) -> list[Observation]:
        return [Observation(self.policy.truncated)]

    def count(self, name: str, unit: str, description: str) -> Count:
        """A process-wide count, exported as a monotonic counter ``name``: one per name, whoever asks for it.

        The count is an integer add where it happens; the SDK reads it at collection, off the request path.
        """
        counter = self._counters.get(name)
        if counter is None:
            counter = self._export(name, unit, description, Count())
        return counter

    def _export(self, name: str, unit: str, description: str, counter: Count) -> Count:
        self._counters[name] = counter
        self._meter.create_observable_counter(
            name, [lambda options: [Observation(counter.value)]], unit=unit, description=description
        )
        return counter

    def request(
        self,
        attributes: Attributes | None = None,
        *,
        user_id: str | None = None,
        request_id: str | None = None,
        input_tokens: int | None = None,
        start: float | None = None,
        clock: Clock | None = None,
    ) -> RequestRecorder:
        """Start recording a request. ``start`` is when it arrived (default: now, by ``clock``, which defaults to
        this object's clock).

        ``user_id`` and ``request_id`` never become metric attributes: the user id is de-identified with the keyed
        hash (dropped when no key is configured) and both go to the request's span only.
        """
        merged = {**self.attributes, **self.policy.filter(attributes)} if attributes else self.attributes
        return RequestRecorder(self, merged, user_id, request_id, input_tokens, start, clock or self.clock)


class RequestRecorder:
    """One request in flight. ``tokens`` is the hot path; ``finish`` records everything, exactly once."""

    __slots__ = (
        "_attributes", "_counted", "_counts", "_exemplar", "_finished", "_index", "_last", "_max", "_metrics", "_min",
        "_span", "_usage_output",
        "clock", "timing",
    )  # fmt: skip

    def __init__(
        self,
        metrics: TokenMetrics,
        attributes: Attributes,
        user_id: str | None,
        request_id: str | None,
        input_tokens: int | None,
        start: float | None,
        clock: Clock,
    ) -> None:
        self._metrics = metrics
        self.clock = clock
        now = self.clock()
        self.timing = RequestTiming(start=now if start is None else start, input_tokens=input_tokens)
        self._attributes = attributes
        self._counts: dict[int, int] = {}
        self._counted = 0
        self._min = math.inf
        self._max = -math.inf
        self._index = metrics.store.inter_token.index
        self._last: float | None = None
        self._usage_output: int | None = None
        self._finished = False
        self._span: Span | None = None
        if metrics.tracer is not None:
            self._span = _start_span(metrics, attributes, user_id, request_id, self.timing.start, now)
            context = self._span.get_span_context()
        else:
            # Exemplars then point at whatever span the application has active (its server span, say).
            context = trace.get_current_span().get_span_context()
        self._exemplar = (
            (context.span_id, context.trace_id) if context.is_valid and context.trace_flags.sampled else None
        )

    def tokens(self, n: int = 1, at: float | None = None) -> None:
        """``n`` output tokens arrived now, or ``at`` (a reading of this recorder's clock), in arrival order.

        A chunk may carry several tokens: they count ``n`` times at gap/n. ``at`` lets a caller take the time as
        the chunk arrives and record it after passing the chunk on (the sidecar does).

        The hot path: a clock read, a bucket index, a dict update and two comparisons. The count and the sum of
        the gaps follow from the token count and the first and last times, so they are worked out in finish().
        """
        if n <= 0:  # a role-only or usage-only chunk: no token, and no effect on the gaps
            return
        now = self.clock() if at is None else at
        last = self._last
        self._last = now
        self._counted += n
        if last is None:
            self.timing.first_token = now
            if n > 1:  # the rest of the first chunk arrived with the first token: gap 0
                self._count_gap(0.0, n - 1)
            return
        gap = (now - last) / n
        counts = self._counts
        key = self._index(gap)
        counts[key] = counts.get(key, 0) + n
        if gap < self._min:
            self._min = gap
        if gap > self._max:
            self._max = gap

    def _count_gap(self, gap: float, n: int) -> None:
        key = self._index(gap)
        self._counts[key] = self._counts.get(key, 0) + n
        self._min = min(self._min, gap)
        self._max = max(self._max, gap)

    def usage(self, *, input_tokens: int | None = None, output_tokens: int | None = None) -> None:
        """Authoritative token counts (an OpenAI usage chunk, say): they win over the counted ones."""
        if input_tokens is not None:
            self.timing.input_tokens = input_tokens
        if output_tokens is not None:
            self._usage_output = output_tokens

    def finish(self, error: BaseException | str | None = None) -> None:
        """Record the request (once; later calls do nothing). ``error`` sets error.type."""
        if self._finished:
            return
        self._finished = True
        timing = self.timing
        timing.end = self.clock()
        if error is not None:
            timing.error_type = error_type_of(error)
        timing.output_tokens = self._counted if self._usage_output is None else self._usage_output
        gaps = RequestGaps(
            counts=self._counts,
            count=max(self._counted - 1, 0),
            total=0.0 if self._last is None or timing.first_token is None else self._last - timing.first_token,
            minimum=self._min,
            maximum=self._max,
        )
        self._metrics.store.record_request(self._attributes, timing, gaps, self._exemplar)
        if self._span is not None:
            _end_span(self._span, timing, self.clock())

    def cancel(self) -> None:
        """The client went away: record the request as cancelled."""
        self.finish(CANCELLED)

    def __enter__(self) -> RequestRecorder:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.finish(exc)


def _wall_ns(clock_value: float, clock_now: float) -> int:
    """A reading of the (monotonic) request clock as wall-clock nanoseconds, for span timestamps."""
    return time.time_ns() - int((clock_now - clock_value) * 1e9)


def _start_span(
    metrics: TokenMetrics,
    attributes: Attributes,
    user_id: str | None,
    request_id: str | None,
    start: float,
    now: float,
) -> Span:
    assert metrics.tracer is not None
    operation = attributes.get(semconv.GEN_AI_OPERATION_NAME, "chat")
    model = attributes.get(semconv.GEN_AI_REQUEST_MODEL)
    span_attributes: dict[str, AttributeValue] = dict(attributes)
    if user_id is not None and metrics.hasher is not None:
        span_attributes[semconv.USER_ID_HASH] = metrics.hasher(user_id)
    if request_id is not None:
        span_attributes[semconv.REQUEST_ID] = request_id
    name = f"{operation} {model}" if model else str(operation)
    return metrics.tracer.start_span(
        name, kind=trace.SpanKind.SERVER, attributes=span_attributes, start_time=_wall_ns(start, now)
    )


def _end_span(span: Span, timing: RequestTiming, now: float) -> None:
    if timing.ttft is not None:
        span.set_attribute("gen_ai.response.time_to_first_chunk", timing.ttft)
    if timing.input_tokens is not None:
        span.set_attribute("gen_ai.usage.input_tokens", timing.input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", timing.output_tokens)
    if timing.error_type is not None:
        span.set_attribute(semconv.ERROR_TYPE, timing.error_type)
        span.set_status(Status(StatusCode.ERROR, timing.error_type))
    assert timing.end is not None
    span.end(end_time=_wall_ns(timing.end, now))
