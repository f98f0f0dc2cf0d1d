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
parses the OpenAI-style events in the chunk: a string split and one ``json.loads`` per event, a few microseconds
for a typical chat.completion.chunk -- the same order as the ``json.dumps`` that made it. A server that knows its
token counts can pass ``count_tokens`` (and ``usage_of``) and skip the parse. Other media types count 1 token
per chunk by default.
"""

from __future__ import annotations

import codecs
from collections.abc import AsyncGenerator, AsyncIterable, Callable, Mapping

from starlette.background import BackgroundTask
from starlette.responses import ContentStream, StreamingResponse
from starlette.types import Receive, Scope, Send

from tokenlat.recorder import Attributes, Clock, RequestRecorder, TokenMetrics
from tokenlat.sse import openai_chunk_tokens, parse_openai_event
from tokenlat.stream import Usage

__all__ = ["SSE_MEDIA_TYPE", "OpenAISSECounter", "TokenStreamingResponse", "openai_event_tokens"]

SSE_MEDIA_TYPE = "text/event-stream"
Content = str | bytes | memoryview
# What one chunk carries: (output tokens, usage or None).
Observation = tuple[int, Usage | None]


def openai_event_tokens(data: str) -> Observation:
    """Tokens and usage of one SSE event's data. ``[DONE]``, non-JSON and malformed events carry neither."""
    try:
        event = parse_openai_event(data)  # None for [DONE]
        tokens = openai_chunk_tokens(event)
    except (ValueError, TypeError, AttributeError):
        # Counting must never break the response it observes: a payload tokenlat does not understand counts 0.
        return 0, None
    return tokens, (_usage(event.get("usage")) if event else None)


def _usage(usage: object) -> Usage | None:
    """(prompt_tokens, completion_tokens) of an OpenAI usage object; None where there is none."""
    if not isinstance(usage, dict):
        return None  # absent, or null, as OpenAI sends on every chunk but the last with include_usage
    prompt, completion = _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    return None if prompt is None and completion is None else (prompt, completion)


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None  # True is no token count


class OpenAISSECounter:
    """Counts output tokens and finds the usage in an OpenAI-style SSE body, chunk by chunk.

    ``counter(chunk)`` returns what the chunk's complete events carry: a chunk may hold several events, or end in
    the middle of one (or of a UTF-8 sequence), so the counter keeps the unfinished rest: one instance per
    response. An event counts when its terminating blank line arrives, which is when an SSE client dispatches it.
    """

    __slots__ = ("_data", "_decoder", "_pending")

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""
        self._data: list[str] = []

    def __call__(self, chunk: Content) -> Observation:
        text = chunk if isinstance(chunk, str) else self._decoder.decode(chunk)
        if "\n" not in text:  # no line ends here, so no event either
            self._pending += text
            return 0, None
        *lines, self._pending = (self._pending + text).split("\n")
        tokens, usage = 0, None
        for raw in lines:
            line = raw.removesuffix("\r")
            if line:
                if line.startswith("data:"):  # comments (": keep-alive"), event: and id: lines carry no tokens
                    self._data.append(line[5:].removeprefix(" "))
            elif self._data:  # a blank line ends the event
                n, event_usage = openai_event_tokens("\n".join(self._data))
                self._data.clear()
                tokens += n
                usage = event_usage or usage
        return tokens, usage


def _is_sse(media_type: str | None) -> bool:
    return media_type is not None and media_type.partition(";")[0].strip().lower() == SSE_MEDIA_TYPE


def _observer(
    count_tokens: Callable[[Content], int] | None, usage_of: Callable[[Content], Usage | None] | None
) -> Callable[[Content], Observation]:
    def observe(chunk: Content) -> Observation:
        return (1 if count_tokens is None else count_tokens(chunk)), (None if usage_of is None else usage_of(chunk))

    return observe


async def _observed(
    body: AsyncIterable[Content], recorder: RequestRecorder, observe: Callable[[Content], Observation]
) -> AsyncGenerator[Content, None]:
    try:
        async for chunk in body:
            tokens, usage = observe(chunk)
            recorder.tokens(tokens)
            if usage is not None:
                recorder.usage(input_tokens=usage[0], output_tokens=usage[1])
            yield chunk
    except BaseException as exc:
        recorder.finish(exc)  # CancelledError and GeneratorExit: "cancelled"; anything else: its class name
        if isinstance(exc, GeneratorExit):  # closed while suspended here: close the upstream too, as yield from would
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                await aclose()
        raise
    recorder.finish()


class TokenStreamingResponse(StreamingResponse):
    """A ``StreamingResponse`` that records the request's TTFT, TPOT, inter-token latency and usage.

    ``content`` is a sync or async iterable of str/bytes chunks, as for ``StreamingResponse``. Token counting:
    ``count_tokens(chunk)`` and ``usage_of(chunk)`` (as in :func:`tokenlat.wrap_stream`); when neither is given, an
    SSE body (``media_type`` text/event-stream, the default) is counted as OpenAI chat.completion.chunk events
    (:class:`OpenAISSECounter`: content tokens, and a usage event feeds ``recorder.usage``), any other body as 1
    token per chunk. ``attributes``, ``user_id``, ``request_id``, ``input_tokens``, ``start`` and ``clock`` go to
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
        if count_tokens is None and usage_of is None and _is_sse(self.media_type):
            observe: Callable[[Content], Observation] = OpenAISSECounter()
        else:
            observe = _observer(count_tokens, usage_of)
        # StreamingResponse has already made a sync iterable async (iterated in a thread pool).
        self._body = _observed(self.body_iterator, self.recorder, observe)
        self.body_iterator = self._body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # The body records its own end when it is exhausted or raises; if it has not by now, the client went
            # away and Starlette stopped iterating (see the module docstring). Both calls are no-ops otherwise.
            self.recorder.cancel()
            await self._body.aclose()
