"""tokenlat.asgi: the OpenAI SSE counter, and TokenStreamingResponse driven as a raw ASGI app under a fake clock.

Times are multiples of 1/8 s so every expected value is exact in binary floating point.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any

import pytest
from starlette.requests import ClientDisconnect
from starlette.types import Message

from tests.otel_helpers import MODEL, FakeClock, Pipeline, point
from tests.streams import OPENAI_CHAT, chunk_at
from tokenlat import semconv
from tokenlat.asgi import OpenAISSECounter, TokenStreamingResponse, openai_event_tokens
from tokenlat.parsers import StreamParser
from tokenlat.recorder import CANCELLED


def event(content: str | None = None, *, role: str | None = None, usage: dict[str, Any] | None = None) -> str:
    """One OpenAI chat.completion.chunk as an SSE event."""
    delta = {k: v for k, v in (("role", role), ("content", content)) if v is not None}
    body: dict[str, Any] = {
        "object": "chat.completion.chunk",
        "choices": [] if usage else [{"index": 0, "delta": delta}],
    }
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"


class EngineError(Exception):
    pass


async def upstream(
    clock: FakeClock, script: Sequence[tuple[float, str | bytes]], end: float, closed: list[bool] | None = None
) -> AsyncIterator[str | bytes]:
    """Yields the script's chunks at their times; then, with ``closed``, waits forever (a stalled engine)."""
    try:
        for t, chunk in script:
            await asyncio.sleep(0)  # a real suspension point, like awaiting the engine
            clock.now = t
            yield chunk
        clock.now = end
        if closed is not None:
            await asyncio.Event().wait()
    finally:
        if closed is not None:
            closed.append(True)


async def serve(
    response: TokenStreamingResponse,
    *,
    disconnect_after: int | None = None,
    spec: str = "2.3",
    received: list[bytes] | None = None,
) -> bytes:
    """Run ``response`` as an ASGI app and return the body the client received (also kept in ``received``).

    After ``disconnect_after`` body chunks the client goes away, as servers report it: for ASGI 2.3 (uvicorn) an
    http.disconnect message, upon which Starlette cancels the streaming task; for 2.4 ``send()`` raises OSError.
    """
    received = [] if received is None else received
    gone = asyncio.Event()
    if disconnect_after == 0:
        gone.set()

    async def receive() -> Message:
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        if gone.is_set() and spec == "2.4":
            raise OSError("connection reset by peer")
        if message["type"] == "http.response.body" and message["body"]:
            received.append(message["body"])
            if len(received) == disconnect_after:
                gone.set()

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": spec}, "method": "POST", "headers": []}
    await response(scope, receive, send)
    return b"".join(received)


# (time the chunk is sent, chunk): a role chunk, a token, two events in one chunk, one event cut in two.
SPLIT = event(", wor") + event("ld")
SCRIPT = [
    (0.25, event(role="assistant")),
    (0.5, event("Hel")),
    (0.75, event("lo") + SPLIT[:30]),
    (1.0, SPLIT[30:]),
    (1.5, DONE),
]
END = 1.75
# Tokens: 1 at 0.5, 2 at 0.75 (the complete event of the cut pair counts at 0.75), 1 at 1.0 -> 4 output tokens.


def test_response_records_from_the_sse_it_sends(pipeline: Pipeline) -> None:
    response = TokenStreamingResponse(
        upstream(pipeline.clock, SCRIPT, END), pipeline.metrics, attributes=MODEL, input_tokens=12, start=0.0
    )
    assert response.media_type == "text/event-stream"
    body = asyncio.run(serve(response))
    assert body == "".join(chunk for _, chunk in SCRIPT).encode()
    m = pipeline.collect()
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).sum == 0.5
    assert point(m, semconv.REQUEST_DURATION).sum == END
    assert semconv.ERROR_TYPE not in point(m, semconv.REQUEST_DURATION).attributes
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == 4
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "input"}).sum == 12
    assert point(m, semconv.TIME_PER_OUTPUT_TOKEN).sum == (END - 0.5) / 3
    itl = point(m, semconv.INTER_TOKEN_LATENCY)
    assert itl.count == 3  # output tokens - 1: the chunk of 2 at 0.75 counts twice at 0.125, then 0.25
    assert itl.sum == 0.5
    assert itl.min == 0.125 and itl.max == 0.25


def test_a_reasoning_model_stream_gets_the_sidecars_ttft_and_tokens(pipeline: Pipeline) -> None:
    # A reasoning model with a tool call (reasoning first, n=2, tool-call arguments), cut every 64 bytes: the
    # response must see the tokens at the times the sidecar's parser sees them, not only its content deltas.
    chunks = chunk_at(OPENAI_CHAT, list(range(64, len(OPENAI_CHAT), 64)))
    script = [(0.125 * (i + 1), chunk) for i, chunk in enumerate(chunks)]
    parser = StreamParser("openai")
    token_times = [t for t, chunk in script for event in parser.feed(chunk) for _ in range(event.tokens)]
    assert len(token_times) == 6  # content deltas alone would be 4
    end = script[-1][0] + 0.25
    response = TokenStreamingResponse(
        upstream(pipeline.clock, script, end), pipeline.metrics, attributes=MODEL, start=0.0
    )
    asyncio.run(serve(response))
    m = pipeline.collect()
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).sum == token_times[0]
    itl = point(m, semconv.INTER_TOKEN_LATENCY)
    assert itl.count == 5 and itl.sum == token_times[-1] - token_times[0]
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == 6  # the usage chunk's


def test_a_last_event_without_its_blank_line_counts_when_the_body_ends(pipeline: Pipeline) -> None:
    # As the sidecar counts it (its parser's close()): at the end of the body, the only time it is known complete.
    script = [(0.25, event("a")), (0.5, event("b").removesuffix("\n"))]
    response = TokenStreamingResponse(
        upstream(pipeline.clock, script, 0.75), pipeline.metrics, attributes=MODEL, start=0.0
    )
    asyncio.run(serve(response))
    itl = point(pipeline.collect(), semconv.INTER_TOKEN_LATENCY)
    assert itl.count == 1 and itl.sum == 0.5


def test_usage_event_wins_over_the_counted_tokens(pipeline: Pipeline) -> None:
    usage = event(usage={"prompt_tokens": 7, "completion_tokens": 9, "total_tokens": 16})
    script = [*SCRIPT[:-1], (1.25, usage), SCRIPT[-1]]
    response = TokenStreamingResponse(
        upstream(pipeline.clock, script, END), pipeline.metrics, attributes=MODEL, input_tokens=12, start=0.0
    )
    asyncio.run(serve(response))
    m = pipeline.collect()
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == 9
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "input"}).sum == 7
    assert point(m, semconv.INTER_TOKEN_LATENCY).count == 3  # the gaps are still those of the tokens seen


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_client_disconnect_is_cancelled_and_releases_the_upstream(pipeline: Pipeline, spec: str) -> None:
    closed: list[bool] = []
    source = upstream(pipeline.clock, SCRIPT[:3], END, closed)
    response = TokenStreamingResponse(source, pipeline.metrics, attributes=MODEL, start=0.0)

    received: list[bytes] = []

    async def run() -> None:
        if spec == "2.3":  # Starlette cancels the streaming task and returns normally
            await serve(response, disconnect_after=2, spec=spec, received=received)
        else:  # send() fails, and Starlette raises
            with pytest.raises((ClientDisconnect, OSError)):
                await serve(response, disconnect_after=2, spec=spec, received=received)
        # Checked inside the loop: asyncio.run's shutdown_asyncgens() would close a generator left open, and
        # `response` still references the body, so only the response's own close can have run these.
        assert response.recorder.timing.error_type == CANCELLED
        assert closed == [True], "the upstream must be closed when the client goes away, not at garbage collection"

    asyncio.run(run())
    assert b"".join(received).startswith((SCRIPT[0][1] + SCRIPT[1][1]).encode())
    m = pipeline.collect()
    duration = point(m, semconv.REQUEST_DURATION)
    assert duration.attributes[semconv.ERROR_TYPE] == CANCELLED and duration.count == 1
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).sum == 0.5


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_a_client_gone_before_the_first_byte_is_cancelled(pipeline: Pipeline, spec: str) -> None:
    # The body never starts, so closing it runs none of its code: the response itself must record the request.
    response = TokenStreamingResponse(upstream(pipeline.clock, SCRIPT, END), pipeline.metrics, attributes=MODEL)

    async def run() -> None:
        try:
            await serve(response, disconnect_after=0, spec=spec)
        except (ClientDisconnect, OSError):
            assert spec == "2.4"
        assert response.recorder.timing.error_type == CANCELLED

    asyncio.run(run())
    m = pipeline.collect()
    assert point(m, semconv.REQUEST_DURATION).attributes[semconv.ERROR_TYPE] == CANCELLED
    assert semconv.TIME_TO_FIRST_TOKEN not in m


@pytest.mark.parametrize("spec", ["2.3", "2.4"])
def test_an_exception_in_the_body_is_its_class_name(pipeline: Pipeline, spec: str) -> None:
    async def failing() -> AsyncIterator[str]:
        yield event("a")
        raise EngineError("the engine lost the request")

    response = TokenStreamingResponse(failing(), pipeline.metrics, attributes=MODEL)
    with pytest.raises(EngineError):
        asyncio.run(serve(response, spec=spec))
    duration = point(pipeline.collect(), semconv.REQUEST_DURATION)
    assert duration.attributes[semconv.ERROR_TYPE] == "EngineError" and duration.count == 1


def test_sync_content_and_other_media_types_count_one_token_per_chunk(pipeline: Pipeline) -> None:
    clock = pipeline.clock

    def lines() -> Iterator[bytes]:  # a sync generator: Starlette iterates it in a thread pool
        for t in (0.25, 0.5, 0.75):
            clock.now = t
            yield b'{"text": "x"}\n'
        clock.now = 1.0

    response = TokenStreamingResponse(lines(), pipeline.metrics, attributes=MODEL, media_type="application/x-ndjson")
    assert asyncio.run(serve(response)) == b'{"text": "x"}\n' * 3
    m = pipeline.collect()
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == 3
    assert point(m, semconv.INTER_TOKEN_LATENCY).count == 2


def test_count_tokens_and_usage_of_take_over_from_the_sse_default(pipeline: Pipeline) -> None:
    script = [(0.25, event("abc")), (0.5, event("de")), (0.75, DONE)]
    response = TokenStreamingResponse(
        upstream(pipeline.clock, script, 1.0),
        pipeline.metrics,
        attributes=MODEL,
        count_tokens=lambda chunk: 0 if chunk == DONE else 2,
        usage_of=lambda chunk: (5, None) if chunk == DONE else None,
        start=0.0,
    )
    asyncio.run(serve(response))
    m = pipeline.collect()
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == 4
    assert point(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "input"}).sum == 5
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).sum == 0.25


def test_counter_handles_several_events_per_chunk_done_comments_and_crlf() -> None:
    counter = OpenAISSECounter()
    usage = {"prompt_tokens": 3, "completion_tokens": 2}
    assert counter(event(role="assistant") + event("a") + event("b")) == (2, None)
    assert counter(": keep-alive\r\n\r\n" + event("c").replace("\n", "\r\n")) == (1, None)
    assert counter("event: message\nid: 7\ndata: not json\n\n") == (0, None)
    assert counter(event("") + event(usage=usage) + DONE) == (0, (3, 2))
    multi_line = json.dumps({"choices": [{"delta": {"content": "x"}}]}, indent=1).replace("\n", "\ndata: ")
    assert counter(f"data: {multi_line}\n\n") == (1, None)  # data lines of one event are joined
    assert counter(event("unterminated").removesuffix("\n")) == (0, None)  # not dispatched until the blank line
    assert counter("\n") == (1, None)


def test_counter_gives_the_same_totals_however_the_bytes_are_cut() -> None:
    body = event("héllo") + event(role="assistant") + event("wörld") + event(usage={"completion_tokens": 2}) + DONE
    data = body.encode()
    for cut in range(len(data) + 1):  # including inside the two-byte UTF-8 sequences
        counter = OpenAISSECounter()
        (tokens_a, usage_a), (tokens_b, usage_b) = counter(data[:cut]), counter(data[cut:])
        assert tokens_a + tokens_b == 2, cut
        assert (usage_a or usage_b) == (None, 2), cut


@pytest.mark.parametrize(
    "data",
    ["[DONE]", "not json", "[1, 2]", '{"choices": 5}', '{"choices": [1]}', '{"choices": [{"delta": "x"}]}'],
)
def test_events_tokenlat_does_not_understand_count_nothing_and_never_raise(data: str) -> None:
    assert openai_event_tokens(data) == (0, None)


def test_usage_values_that_are_not_counts_are_ignored() -> None:
    assert openai_event_tokens('{"usage": {"prompt_tokens": true, "completion_tokens": "4"}}') == (0, None)
    assert openai_event_tokens('{"usage": {"prompt_tokens": 4}}') == (0, (4, None))
    assert openai_event_tokens('{"usage": null, "choices": [{"delta": {"content": "x"}}]}') == (1, None)


def test_importing_tokenlat_does_not_need_starlette() -> None:
    code = "import sys, tokenlat; assert 'starlette' not in sys.modules, 'tokenlat imported starlette'"
    subprocess.run([sys.executable, "-c", code], check=True)
