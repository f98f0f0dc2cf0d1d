"""Wrap a token stream (sync or async), or decorate the generator function that makes one.

The wrappers pass every item through unchanged and drive a ``RequestRecorder``: per item only the token count
(``count_tokens``) and, when given, the usage (``usage_of``) are looked at; the recorder does the rest. A stream
error is recorded as error.type = the exception's class name and re-raised; an abandoned stream (close(),
aclose(), task cancellation: a client disconnect) as "cancelled". A stream that is never iterated records
nothing.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, TypeVar, overload

from tokenlat.recorder import CANCELLED, Attributes, Clock, RequestRecorder, TokenMetrics
from tokenlat.timing import RequestTiming

T = TypeVar("T")
# (input_tokens, output_tokens) reported by an item, e.g. an OpenAI usage chunk; None for most items.
Usage = tuple[int | None, int | None]
UsageOf = Callable[[Any], Usage | None]

__all__ = [
    "CANCELLED",
    "RequestTiming",
    "TokenMetrics",
    "instrument",
    "instrument_stream",
    "wrap_async_stream",
    "wrap_stream",
]


def _recorder(
    metrics: TokenMetrics,
    attributes: Attributes | None,
    input_tokens: int | None,
    clock: Clock | None,
    start: float | None,
    user_id: str | None,
    request_id: str | None,
) -> RequestRecorder:
    return metrics.request(
        attributes, user_id=user_id, request_id=request_id, input_tokens=input_tokens, start=start, clock=clock
    )


def _observe(
    recorder: RequestRecorder, item: Any, count_tokens: Callable[[Any], int] | None, usage_of: UsageOf | None
) -> None:
    recorder.tokens(1 if count_tokens is None else count_tokens(item))
    if usage_of is not None:
        usage = usage_of(item)
        if usage is not None:
            recorder.usage(input_tokens=usage[0], output_tokens=usage[1])


def wrap_stream(
    stream: Iterable[T],
    metrics: TokenMetrics,
    *,
    attributes: Attributes | None = None,
    input_tokens: int | None = None,
    count_tokens: Callable[[T], int] | None = None,
    usage_of: UsageOf | None = None,
    user_id: str | None = None,
    request_id: str | None = None,
    clock: Clock | None = None,
    start: float | None = None,
) -> Iterator[T]:
    """Yield ``stream``'s items unchanged and record the request when it ends.

    ``start`` is when the request arrived (default: now). ``count_tokens(item)`` says how many tokens an item
    carries (default 1); items with 0 tokens neither count nor set the first-token time.
    """
    # A plain function around the generator: `start` is read at the call, when the request arrives, not at
    # the first next() -- generator bodies run lazily.
    recorder = _recorder(metrics, attributes, input_tokens, clock, start, user_id, request_id)
    return _wrap_sync(iter(stream), recorder, count_tokens, usage_of)


def _wrap_sync(
    it: Iterator[T], recorder: RequestRecorder, count_tokens: Callable[[T], int] | None, usage_of: UsageOf | None
) -> Iterator[T]:
    error: BaseException | None = None
    try:
        for item in it:
            _observe(recorder, item, count_tokens, usage_of)
            yield item
    except GeneratorExit as exc:
        error = exc
        # Like `yield from`: release the upstream (e.g. its HTTP connection) now, not at GC.
        close = getattr(it, "close", None)
        if close is not None:
            close()
        raise
    except BaseException as exc:
        error = exc
        raise
    finally:
        # A generator's finally runs exactly once, however it ends; finish() is idempotent anyway.
        recorder.finish(error)


def wrap_async_stream(
    stream: AsyncIterable[T],
    metrics: TokenMetrics,
    *,
    attributes: Attributes | None = None,
    input_tokens: int | None = None,
    count_tokens: Callable[[T], int] | None = None,
    usage_of: UsageOf | None = None,
    user_id: str | None = None,
    request_id: str | None = None,
    clock: Clock | None = None,
    start: float | None = None,
) -> AsyncIterator[T]:
    """The async twin of :func:`wrap_stream`; task cancellation and aclose() record "cancelled"."""
    recorder = _recorder(metrics, attributes, input_tokens, clock, start, user_id, request_id)
    return _wrap_async(aiter(stream), recorder, count_tokens, usage_of)


async def _wrap_async(
    it: AsyncIterator[T], recorder: RequestRecorder, count_tokens: Callable[[T], int] | None, usage_of: UsageOf | None
) -> AsyncIterator[T]:
    error: BaseException | None = None
    try:
        async for item in it:
            _observe(recorder, item, count_tokens, usage_of)
            yield item
    except GeneratorExit as exc:  # aclose() while suspended at `yield`
        error = exc
        aclose = getattr(it, "aclose", None)
        if aclose is not None:
            await aclose()
        raise
    except BaseException as exc:  # includes CancelledError: the consuming task was cancelled
        error = exc
        raise
    finally:
        recorder.finish(error)


@overload
def instrument_stream(stream: AsyncIterable[T], metrics: TokenMetrics, **options: Any) -> AsyncIterator[T]: ...
@overload
def instrument_stream(stream: Iterable[T], metrics: TokenMetrics, **options: Any) -> Iterator[T]: ...
def instrument_stream(
    stream: Iterable[T] | AsyncIterable[T], metrics: TokenMetrics, **options: Any
) -> Iterator[T] | AsyncIterator[T]:
    """Wrap a sync or async stream, whichever ``stream`` is (async if it has ``__aiter__``)."""
    if hasattr(stream, "__aiter__"):
        return wrap_async_stream(stream, metrics, **options)  # type: ignore[arg-type]
    return wrap_stream(stream, metrics, **options)  # type: ignore[arg-type]


F = TypeVar("F", bound=Callable[..., Any])


def instrument(
    metrics: TokenMetrics,
    *,
    attributes: Attributes | None = None,
    attributes_of: Callable[..., Attributes] | None = None,
    count_tokens: Callable[[Any], int] | None = None,
    usage_of: UsageOf | None = None,
) -> Callable[[F], F]:
    """Decorate a sync or async generator function: every call's stream is recorded as one request.

    ``attributes_of(*args, **kwargs)`` adds per-call attributes (the model, the user tier ...).
    """

    def decorate(func: F) -> F:
        wrap = wrap_async_stream if inspect.isasyncgenfunction(func) else wrap_stream
        if not (inspect.isasyncgenfunction(func) or inspect.isgeneratorfunction(func)):
            raise TypeError(f"tokenlat.instrument decorates generator functions, not {func!r}")

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = metrics.clock()
            extra = attributes_of(*args, **kwargs) if attributes_of is not None else None
            merged = {**(attributes or {}), **(extra or {})}
            return wrap(
                func(*args, **kwargs), metrics, attributes=merged, count_tokens=count_tokens, usage_of=usage_of,
                start=start,
            )  # fmt: skip

        return wrapper  # type: ignore[return-value]

    return decorate
