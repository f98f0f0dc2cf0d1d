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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.metrics import Histogram, MeterProvider, get_meter_provider
from opentelemetry.trace import Span, Status, StatusCode, TracerProvider
from opentelemetry.util.types import AttributeValue

from tokenlat import semconv
from tokenlat.attributes import AttributePolicy
from tokenlat.itl import InterTokenHistogram, RequestGaps, TokenlatMetricExporter
from tokenlat.privacy import UserIdHasher

Clock = Callable[[], float]
Attributes = Mapping[str, AttributeValue]
logger = logging.getLogger("tokenlat")

# error.type for a request the consumer abandoned (client disconnect, close(), aclose(), task cancellation).
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
        return None if self.first_token is None else self.first_token - self.start

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def time_per_output_token(self) -> float | None:
        # The conventions' server definition: the time after the first token spread over the tokens after it.
        ttft, duration = self.ttft, self.duration
        if ttft is None or duration is None or self.output_tokens < 2:
            return None
        return (duration - ttft) / (self.output_tokens - 1)


def error_type_of(error: BaseException | str) -> str:
    """error.type as the conventions want it: the exception's class name, or "cancelled" for abandonment."""
    if isinstance(error, str):
        return error
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        return CANCELLED
    return type(error).__qualname__


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
        clock: Clock = time.perf_counter,
    ) -> None:
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        meter = provider.get_meter("tokenlat")
        self.policy = policy if policy is not None else AttributePolicy()
        # Process-wide attributes (GPU type, quantization ...), filtered once.
        self.attributes = self.policy.filter(attributes or {})
        self.hasher = user_id_hasher
        self.clock = clock
        self.inter_token = InterTokenHistogram(exponential=exponential)
        self._histograms: dict[str, Histogram] = {
            spec.name: meter.create_histogram(
                spec.name,
                unit=spec.unit,
                description=spec.description,
                explicit_bucket_boundaries_advisory=spec.buckets,
            )
            for spec in semconv.HISTOGRAMS
        }
        self.tracer = (tracer_provider or trace.get_tracer_provider()).get_tracer("tokenlat") if spans else None
        if not _attach_to_exporters(provider, self.inter_token):
            logger.info(
                "tokenlat: no TokenlatMetricExporter on this MeterProvider, so %s is not exported; "
                "use tokenlat.configure() or wrap your exporter in tokenlat.TokenlatMetricExporter",
                semconv.INTER_TOKEN_LATENCY,
            )

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

    def _record(self, timing: RequestTiming, attributes: Attributes, ctx: otel_context.Context | None) -> None:
        h = self._histograms
        ttft, tpot = timing.ttft, timing.time_per_output_token
        if ttft is not None:
            h[semconv.TIME_TO_FIRST_TOKEN].record(ttft, attributes, context=ctx)
        if tpot is not None:
            h[semconv.TIME_PER_OUTPUT_TOKEN].record(tpot, attributes, context=ctx)
        duration_attributes = (
            attributes if timing.error_type is None else {**attributes, semconv.ERROR_TYPE: timing.error_type}
        )
        h[semconv.REQUEST_DURATION].record(timing.duration or 0.0, duration_attributes, context=ctx)
        usage = h[semconv.TOKEN_USAGE]
        if timing.input_tokens is not None:
            usage.record(timing.input_tokens, {**attributes, semconv.GEN_AI_TOKEN_TYPE: "input"}, context=ctx)
        usage.record(timing.output_tokens, {**attributes, semconv.GEN_AI_TOKEN_TYPE: "output"}, context=ctx)


def _attach_to_exporters(provider: MeterProvider, histogram: InterTokenHistogram) -> bool:
    """Find TokenlatMetricExporters behind the provider's readers.

    The SDK keeps readers and exporters private, so this is best effort (tests pin that it works with the SDK
    in use); where it finds none, call ``exporter.attach(metrics.inter_token)`` yourself.
    """
    found = False
    for reader in getattr(provider, "_metric_readers", ()):
        exporter = getattr(reader, "_exporter", None)
        if isinstance(exporter, TokenlatMetricExporter):
            exporter.attach(histogram)
            found = True
    return found


class RequestRecorder:
    """One request in flight. ``tokens`` is the hot path; ``finish`` records everything, exactly once."""

    __slots__ = (
        "_attributes", "_context", "_finished", "_gaps", "_index", "_last", "_metrics", "_span", "_usage_output",
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
        self._gaps = RequestGaps()
        self._index = metrics.inter_token.index
        self._last: float | None = None
        self._usage_output: int | None = None
        self._finished = False
        self._span: Span | None = None
        if metrics.tracer is not None:
            self._span = _start_span(metrics, attributes, user_id, request_id, self.timing.start, now)
            self._context: otel_context.Context | None = trace.set_span_in_context(self._span)
        else:
            # Exemplars then point at whatever span the application has active (its server span, say).
            self._context = otel_context.get_current()

    def tokens(self, n: int = 1) -> None:
        """``n`` output tokens arrived now (a chunk may carry several: they count ``n`` times at gap/n)."""
        if n <= 0:  # a role-only or usage-only chunk: no token, and no effect on the gaps
            return
        now = self.clock()
        last = self._last
        self._last = now
        gaps = self._gaps
        if last is None:
            self.timing.first_token = now
            if n > 1:  # the rest of the first chunk arrived with the first token: gap 0
                zero = self._index(0.0)
                gaps.counts[zero] = gaps.counts.get(zero, 0) + n - 1
                gaps.count += n - 1
                gaps.minimum = 0.0
                gaps.maximum = max(gaps.maximum, 0.0)
        else:
            gap = (now - last) / n
            key = self._index(gap)
            gaps.counts[key] = gaps.counts.get(key, 0) + n
            gaps.count += n
            gaps.total += now - last
            if gap < gaps.minimum:
                gaps.minimum = gap
            if gap > gaps.maximum:
                gaps.maximum = gap
        self.timing.output_tokens += n

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
        if self._usage_output is not None:
            timing.output_tokens = self._usage_output
        metrics = self._metrics
        metrics.inter_token.merge(self._attributes, self._gaps)
        metrics._record(timing, self._attributes, self._context)
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
