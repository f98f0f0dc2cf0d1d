"""Starlette/FastAPI: record a streamed response's token latency from the chunks it sends to the client.

    @app.post("/v1/chat/completions")
    async def chat(body: ChatRequest) -> TokenStreamingResponse:
        return TokenStreamingResponse(
            openai_sse(engine.generate(body)), telemetry.metrics, attributes={"gen_ai.request.model": body.model}
        )

The request starts when the response object is created, so create it first thing in the endpoint (the body
generator only runs once Starlette iterates it), or pass ``start=`` read earlier with ``metrics.clock()``. The
response records the request once, when it ends: the body is exhausted (success), the body raises (error.type =
the exception's class name), or the client goes away (error.type "cancelled"). A chunk counts when the body hands it
to Starlette, immediately before it is sent; so on a disconnect the chunk in flight may count though the client
never got it.

Starlette notices a disconnect in one of two ways, depending on the server's ASGI version: it cancels the
streaming task (ASGI < 2.4, e.g. uvicorn) or ``send()`` raises ``OSError`` (>= 2.4). Either way it stops iterating
without closing the body, so the response records "cancelled" itself when ``__call__`` ends with the body
unfinished, and closes the body then, so that the upstream (the engine's generation) is released at once rather
than whenever the garbage collector gets to it.

Cost per chunk: a clock read, a dict update, and the token count. For ``text/event-stream`` the default count
parses the OpenAI-style events in the chunk with the sidecar's parser (``tokenlat.sse.OpenAISSECounter``): a line
split and one ``json.loads`` per event, a few microseconds for a typical chat.completion.chunk -- the same order
as the ``json.dumps`` that made it. A server that knows its token counts can pass ``count_tokens`` (and
``usage_of``) and skip the parse. Other media types count 1 token per chunk by default.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping

from starlette.background import BackgroundTask
from starlette.responses import ContentStream, StreamingResponse
from starlette.types import Receive, Scope, Send

from tokenlat.recorder import Attributes, Clock, RequestRecorder, TokenMetrics
from tokenlat.sse import Content, Observation, OpenAISSECounter, openai_event_tokens
from tokenlat.stream import Usage

# OpenAISSECounter and openai_event_tokens live in tokenlat.sse (they need no Starlette) and are part of this
# module's interface too, where services that stream with Starlette look for them.
__all__ = ["SSE_MEDIA_TYPE", "OpenAISSECounter", "TokenStreamingResponse", "openai_event_tokens"]

SSE_MEDIA_TYPE = "text/event-stream"


def _is_sse(media_type: str | None) -> bool:
    return media_type is not None and media_type.partition(";")[0].strip().lower() == SSE_MEDIA_TYPE


def _observer(
    count_tokens: Callable[[Content], int] | None, usage_of: Callable[[Content], Usage | None] | None
) -> Callable[[Content], Observation]:
    def observe(chunk: Content) -> Observation:
        return (1 if count_tokens is None else count_tokens(chunk)), (None if usage_of is None else usage_of(chunk))

    return observe


def _record(recorder: RequestRecorder, observation: Observation) -> None:
    tokens, usage = observation
    recorder.tokens(tokens)
    if usage is not None:
        recorder.usage(input_tokens=usage[0], output_tokens=usage[1])


async def _observed(
    body: AsyncIterable[Content],
    recorder: RequestRecorder,
    observe: Callable[[Content], Observation],
    flush: Callable[[], Observation] | None = None,
) -> AsyncGenerator[Content, None]:
    """``body``'s chunks, each observed as it is handed on; ``flush`` gives what the complete body leaves over
    (an SSE event without its blank line), counted at the body's end as the sidecar counts it."""
    try:
        async for chunk in body:
            _record(recorder, observe(chunk))
            yield chunk
    except BaseException as exc:
        recorder.finish(exc)  # CancelledError and GeneratorExit: "cancelled"; anything else: its class name
        if isinstance(exc, GeneratorExit):  # closed while suspended here: close the upstream too, as yield from would
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        raise
    if flush is not None:
        _record(recorder, flush())
    recorder.finish()


class TokenStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that records the request's TTFT, TPOT, inter-token latency and usage.

    ``content`` is a sync or async iterable of str/bytes chunks, as for ``StreamingResponse``. Token counting:
    ``count_tokens(chunk)`` and ``usage_of(chunk)`` (as in :func:`tokenlat.wrap_stream`); when neither is given, an
    SSE body (``media_type`` text/event-stream, the default) is counted as OpenAI chat.completion.chunk events
    (:class:`OpenAISSECounter`: the sidecar's counting, so content, reasoning, refusal and tool-call argument
    deltas are tokens, and a usage event feeds ``recorder.usage``), any other body as 1 token per chunk.
    ``attributes``, ``user_id``, ``request_id``, ``input_tokens``, ``start`` and ``clock`` go to
    :meth:`TokenMetrics.request`; ``recorder`` is the request's recorder, e.g. to report usage learnt elsewhere.

    A response that is created but never sent records nothing (and, with spans on, never ends its span).
    """

    def __init__(
        self,
        content: ContentStream,
        metrics: TokenMetrics,
        *,
        attributes: Attributes | None = None,
        user_id: str | None = None,
        request_id: str | None = None,
        input_tokens: int | None = None,
        count_tokens: Callable[[Content], int] | None = None,
        usage_of: Callable[[Content], Usage | None] | None = None,
        start: float | None = None,
        clock: Clock | None = None,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        media_type: str | None = SSE_MEDIA_TYPE,
        background: BackgroundTask | None = None,
    ) -> None:
        # First, so that the default start is as close to the request's arrival as the caller made it.
        self.recorder = metrics.request(
            attributes, user_id=user_id, request_id=request_id, input_tokens=input_tokens, start=start, clock=clock
        )
        super().__init__(content, status_code, headers, media_type, background)
        flush: Callable[[], Observation] | None = None
        if count_tokens is None and usage_of is None and _is_sse(self.media_type):
            counter = OpenAISSECounter()
            observe: Callable[[Content], Observation] = counter
            flush = counter.close
        else:
            observe = _observer(count_tokens, usage_of)
        # StreamingResponse has already made a sync iterable async (iterated in a thread pool).
        self._body = _observed(self.body_iterator, self.recorder, observe, flush)
        self.body_iterator = self._body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The body records its own end when it is exhausted or raises; if it has not by now, the client went
            # away and Starlette stopped iterating (see the module docstring). Both calls are no-ops otherwise.
            self.recorder.cancel()
            await self._body.aclose()
