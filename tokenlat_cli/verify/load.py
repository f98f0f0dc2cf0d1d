"""The load: concurrent streaming chat completions through the real tokenlat instrumentation.

Every request is measured twice: by the tokenlat wrapper or the sidecar (what goes to the Collector) and by this
driver (the ground truth verify compares Prometheus with). The model server's seeded timings make the load
repeatable. A token's true time is where the measurement can see it:

- measured in this process (the library), when this client reads it, as the library does;
- measured a hop away (the sidecar), when the model server wrote it (:data:`WRITTEN_AT`, stamped into the chunk).
  This client's own delays (its event loop busy with a hundred streams, the process off its core) delay every
  stream's next reading at once, which no measurement a hop away can see. In the truth they moved the inter-token
  p99 by 8% in a CI run, and by 2% to 30% with two busy loops contending for the cores, where the truth from the
  server's writes stayed within 3%. A request still starts when this client sends it (:func:`_start_when_sent`).

A hop away, the measurement's own delays are the mirror image: the sidecar stopped for 20 ms (SIGSTOP, as a host
that takes its core away) reads a hundred streams' next chunks 20 ms late at once, and moved its inter-token p99
16% to 29% off the server's writes. What it read then is what it relayed then, so it is no error of its measuring,
and the truth through the sidecar is not a value but an interval (:class:`Bounds`): it reads an event after the
server wrote it and before this client reads it (it relays what it has read), and starts a request's clock after
this client sent it and before the server received it (:data:`RECEIVED_AT`). Each value it records lies between
the earliest and latest those allow, so each of its quantiles lies between theirs.

The model server streams as a reasoning model with tools does (:data:`SYNTHETIC_SERVER_ARGS`), so the load holds
every kind of token the library counts. The two measurements count apart: the library with its own counting
(tokenlat.sse, the sidecar's parser), the truth by reading back the synthetic server's token texts
(:func:`synthetic_tokens`), checked against the server's usage report. A counting rule the library gets wrong
(a kind of delta it misses) therefore shows as a difference verify reports, instead of being agreed on by both.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import aiohttp

from tokenlat import semconv
from tokenlat.sse import DONE, iter_sse_data, openai_event_tokens
from tokenlat.stream import RequestTiming, TokenMetrics, wrap_async_stream
from tokenlat_cli.verify.synthetic import RECEIVED_AT, WRITTEN_AT, token_text

if TYPE_CHECKING:
    from tokenlat_cli.verify.statistics import Recorded

Progress = Callable[[int, int], None]
# The headers tokenlat sidecar reads them from by default.
USER_ID_HEADER = "x-user-id"
REQUEST_ID_HEADER = "x-request-id"
#: ``python -m tokenlat_cli.verify.synthetic`` flags that make verify's model server a reasoning model that ends each
#: answer with a tool call: about a quarter of the tokens are reasoning, the last 4 tool-call arguments, the rest
#: content. Its chunks carry their write times, the truth through the sidecar (module docstring).
SYNTHETIC_SERVER_ARGS = ("--reasoning=0.25", "--tool-call-tokens=4", "--stamp-writes")

# token_text(position) is "tok<position + 1> ": every token the synthetic server generates carries its text, in
# whichever field it goes out (content, reasoning_content, a tool call's arguments), and nothing else it sends
# looks like one.
_PREFIX, _, _SUFFIX = token_text(0).partition("1")
_TOKEN_TEXT = re.compile(rf"\b{re.escape(_PREFIX)}(\d+){re.escape(_SUFFIX)}")


def _per_metric() -> dict[str, list[float]]:
    return {spec.name: [] for spec in semconv.ALL_METRICS}


@dataclass
class Bounds:
    """Through the sidecar, per metric, the least and the most each of its values can be (module docstring)."""

    low: dict[str, list[float]] = field(default_factory=_per_metric)
    high: dict[str, list[float]] = field(default_factory=_per_metric)

    def add(self, spec: semconv.MetricSpec, low: float, high: float, times: int = 1) -> None:
        self.low[spec.name].extend([low] * times)
        self.high[spec.name].extend([high] * times)

    def of(self, spec: semconv.MetricSpec) -> tuple[list[float], list[float]]:
        """The least and the most values of ``spec``'s metric."""
        return self.low[spec.name], self.high[spec.name]

    def extend(self, other: Bounds) -> None:
        for name, values in other.low.items():
            self.low[name].extend(values)
            self.high[name].extend(other.high[name])


@dataclass
class _Seen:
    """One event of a stream through the sidecar: when the server wrote it, and when this client read it."""

    written: float
    read: float


@dataclass
class LoadResult:
    """Ground truth of the successful requests, and what went wrong with the others."""

    truths: list[RequestTiming] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    #: Every gap between consecutive output tokens, per token (the synthetic server sends one token a chunk).
    gaps: list[float] = field(default_factory=list)
    #: The trace ids of the requests' spans, when the library measured with spans on (their exemplars' targets).
    trace_ids: set[str] = field(default_factory=set)
    #: What the library recorded and sent, per histogram, when it measured in this process (statistics.Recorded).
    recorded: dict[str, Recorded] = field(default_factory=dict)
    #: Where the sidecar measured: the interval each true value lies in, as it could see it.
    bounds: Bounds | None = None

    @property
    def output_tokens(self) -> int:
        return sum(t.output_tokens for t in self.truths)

    @property
    def input_tokens(self) -> int:
        return sum(t.input_tokens or 0 for t in self.truths)


def truth_series(truths: Sequence[RequestTiming]) -> dict[str, list[float]]:
    """Per metric, the true per-request values (TPOT only where it is defined)."""
    series: dict[str, list[float]] = {spec.name: [] for spec in semconv.HISTOGRAMS}
    for t in truths:
        for spec, value in (
            (semconv.TTFT_SPEC, t.ttft),
            (semconv.TPOT_SPEC, t.time_per_output_token),
            (semconv.DURATION_SPEC, t.duration),
        ):
            if value is not None:
                series[spec.name].append(value)
    return series


def _prompt(rng: random.Random) -> tuple[str, int]:
    words = rng.randint(5, 60)
    return " ".join(f"w{i}" for i in range(words)), words


def synthetic_tokens(data: str) -> list[int]:
    """The 1-based positions of the tokens one SSE event of the synthetic server carries, read from their texts.

    The truth's count: it knows nothing of which fields count as tokens, which is what the measurement has to get
    right, and the positions show a token lost, repeated or out of order.
    """
    return [int(number) for number in _TOKEN_TEXT.findall(data)]


def _server_stamps(data: str, start: float, read: float) -> tuple[float, float]:
    """When the model server received the request and wrote the event ``data`` (its :data:`RECEIVED_AT` and
    :data:`WRITTEN_AT` stamps). They must lie in that order between the request's start and ``read``, this reading,
    or the two processes do not share one clock and the truth would be garbage."""
    chunk = json.loads(data)
    received, written = chunk.get(RECEIVED_AT), chunk.get(WRITTEN_AT)
    if not (isinstance(received, float) and isinstance(written, float) and start <= received <= written <= read):
        raise RuntimeError(
            f"the model server's {RECEIVED_AT} {received!r} and {WRITTEN_AT} {written!r} are not in order between"
            f" the request's start ({start:.6f}) and this reading ({read:.6f}): not verify's model server, or not"
            " one clock (CLOCK_MONOTONIC)"
        )
    return received, written


def _sidecar_bounds(
    truth: RequestTiming, received: float, first: _Seen, events: Sequence[tuple[_Seen, int]], end: _Seen
) -> Bounds:
    """One request's bounds (module docstring): ``first``, its first token's event; ``events``, every later token
    event with its tokens; ``end``, its last event's write, and this client's reading once the response ended."""
    bounds = Bounds()
    bounds.add(semconv.TTFT_SPEC, first.written - received, first.read - truth.start)
    bounds.add(semconv.DURATION_SPEC, end.written - received, end.read - truth.start)
    if truth.output_tokens > 1:
        after_first = truth.output_tokens - 1
        low, high = end.written - first.read, end.read - first.written
        bounds.add(semconv.TPOT_SPEC, low / after_first, high / after_first)
    previous = first
    for seen, tokens in events:
        low, high = seen.written - previous.read, seen.read - previous.written
        bounds.add(semconv.ITL_SPEC, low / tokens, high / tokens, tokens)
        previous = seen
    return bounds


def _measured_tokens(data: str) -> int:
    """The library's count of one event's tokens: what a service's TokenStreamingResponse counts."""
    return openai_event_tokens(data)[0]


async def _events(response: aiohttp.ClientResponse) -> AsyncIterator[str]:
    """The data of the response's SSE events, up to [DONE]."""
    async for data in iter_sse_data(response.content.iter_any()):
        if data == DONE:
            return
        yield data


def identities(index: int) -> tuple[str, str]:
    """The user id and request id of the load's request ``index``: personal-looking, unique per request."""
    return f"user-{index}@example.com", f"req-{index:06d}-{index * 7919 % 100003:05d}"


async def _one_request(
    session: aiohttp.ClientSession,
    index: int,
    url: str,
    model: str,
    rng: random.Random,
    metrics: TokenMetrics | None,
    attributes: Mapping[str, str],
    gaps: list[float],
    bounds: Bounds | None = None,
) -> RequestTiming:
    """One request, its truth returned; its gaps go to ``gaps``, and measured outside (``metrics`` None) its
    bounds to ``bounds`` when given."""
    prompt, words = _prompt(rng)
    body = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "messages": [{"role": "user", "content": prompt}],
    }
    # Every request carries a user id and a request id, as real traffic does: neither may end up in a label.
    user_id, request_id = identities(index)
    headers = {USER_ID_HEADER: user_id, REQUEST_ID_HEADER: request_id}
    truth = RequestTiming(start=time.perf_counter(), input_tokens=words)
    # Measured outside (metrics None), the request's clock starts once it is handed to its connection (see below).
    trace_ctx = truth if metrics is None else None
    async with session.post(
        f"{url}/v1/chat/completions", json=body, headers=headers, trace_request_ctx=trace_ctx
    ) as response:
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {(await response.text())[:200]}")
        usage: dict[str, Any] = {}
        stream = _events(response)
        if metrics is not None:  # None: something outside this process measures (the sidecar)
            stream = wrap_async_stream(
                stream, metrics, attributes=attributes, input_tokens=words, count_tokens=_measured_tokens,
                start=truth.start, user_id=user_id, request_id=request_id,
            )  # fmt: skip
        outside = metrics is None
        last: float | None = None
        now = truth.start
        received = truth.start
        seen = first_seen = _Seen(now, now)
        events: list[tuple[_Seen, int]] = []
        async for data in stream:
            # The library's reading comes just before; a measurement outside reads the write (module docstring).
            now = time.perf_counter()
            if outside:
                received, written = _server_stamps(data, truth.start, now)
                seen, now = _Seen(written, now), written
            positions = synthetic_tokens(data)
            if not positions:  # finish, tool-call header or usage: the usage report is the cross-check
                usage = json.loads(data).get("usage") or usage
                continue
            first = truth.output_tokens + 1
            if positions != list(range(first, first + len(positions))):
                raise RuntimeError(f"tokens {positions} where token {first} was next")
            tokens = len(positions)
            if last is None:
                truth.first_token, first_seen = now, seen
            else:
                gaps.extend([(now - last) / tokens] * tokens)
                if outside:
                    events.append((seen, tokens))
            last = now
            truth.output_tokens += tokens
        if outside:
            truth.end = now  # the write of the last event
            await response.read()  # to the response's end, which the sidecar's clock stops at
            end = _Seen(seen.written, time.perf_counter())
            if bounds is not None and truth.first_token is not None:
                bounds.extend(_sidecar_bounds(truth, received, first_seen, events, end))
        else:
            truth.end = time.perf_counter()
    # The server's own count must agree with what the client counted, or the truth itself is wrong.
    if usage.get("completion_tokens") != truth.output_tokens or usage.get("prompt_tokens") != words:
        raise RuntimeError(f"usage {usage} disagrees with the client's count ({truth.output_tokens} out, {words} in)")
    return truth


async def run_load(
    url: str,
    total: int,
    concurrency: int,
    metrics: TokenMetrics | None,
    attributes: Mapping[str, str],
    model: str,
    seed: int,
    progress: Progress | None = None,
    ramp: float = 0.0,
    services: Sequence[TokenMetrics] = (),
    keep_going: Callable[[], bool] | None = None,
) -> LoadResult:
    """``total`` streaming requests, at most ``concurrency`` at a time, the first ones started over ``ramp`` seconds.

    ``services``: the load spread over several instrumented services, as behind a load balancer: request ``i`` is
    measured by ``services[i % len(services)]`` (``metrics`` is then not used). ``keep_going``: asked before each
    request is started; once it says no, the requests in flight finish and no more start (a load that lasts as long
    as something else takes, with ``total`` as its cap).

    A ramp as long as a stream takes starts the load as it runs in steady state, where a request starts when
    another ends. Started all at once, a hundred requests queue behind each other in every process on the way
    (tens of milliseconds for the last), and a measurement that starts the clock on arrival (the sidecar) leaves
    that queue out of TTFT where the truth counts it.
    """
    result = LoadResult(bounds=Bounds() if metrics is None and not services else None)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(total):
        queue.put_nowait(index)
    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=300, sock_connect=10)
    done = 0

    async def worker(session: aiohttp.ClientSession, delay: float) -> None:
        nonlocal done
        await asyncio.sleep(delay)
        while True:
            if keep_going is not None and not keep_going():
                return
            try:
                index = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            rng = random.Random(seed * 1_000_003 + index)
            try:
                request_gaps: list[float] = []
                request_bounds = Bounds()
                measured = services[index % len(services)] if services else metrics
                truth = await _one_request(
                    session, index, url, model, rng, measured, attributes, request_gaps, request_bounds
                )
                result.truths.append(truth)
                result.gaps.extend(request_gaps)
                if result.bounds is not None:
                    result.bounds.extend(request_bounds)
            except (aiohttp.ClientError, RuntimeError, ValueError, asyncio.TimeoutError) as exc:
                result.failures.append(f"request {index}: {type(exc).__name__}: {exc}")
            done += 1
            if progress is not None:
                progress(done, total)

    traces = [_start_when_sent()] if metrics is None and not services else []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=traces) as session:
        workers = min(concurrency, total)
        await asyncio.gather(*(worker(session, ramp * w / workers) for w in range(workers)))
    return result


def _start_when_sent() -> aiohttp.TraceConfig:
    """Start a request's truth as its bytes go out, for a measurement outside this process.

    aiohttp signals a body chunk "sent" just before that chunk's write, which carries the request head too (they go
    in one write). Its earlier "headers sent" signal can come a turn of this event loop before: before Python 3.12
    the body is written by a task that is not started at once, and waits behind every stream's ready work. A start
    taken there counted this process's delays, which the sidecar cannot see: with two busy loops contending for the
    cores, the sidecar's TTFT p50 was 3 to 5% under the truth in three runs of six.

    The library in this process starts its clock with the truth's, before the request is even built. A sidecar
    starts it when the request reaches it, and cannot see the time before the request left: opening a connection,
    or this process's own queue when a hundred requests start at once (about 20 ms for the last of them). Counted
    in the truth, that alone would fail the TTFT checks of native histograms.
    """

    async def body_sent(
        session: aiohttp.ClientSession, context: SimpleNamespace, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        truth = context.trace_request_ctx
        if isinstance(truth, RequestTiming) and "sent" not in vars(context):  # the first chunk's write
            context.sent = truth.start = time.perf_counter()

    config = aiohttp.TraceConfig()
    config.on_request_chunk_sent.append(body_sent)
    return config
