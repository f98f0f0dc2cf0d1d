"""SSE parsing of OpenAI-style streams cut at arbitrary network boundaries, and counting them inside a process
exactly as the sidecar counts them from outside."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterable

import pytest

from tests.streams import CASES, Case, chunk_at, tricky_cuts
from tokenlat.parsers import StreamParser
from tokenlat.sse import (
    OpenAISSECounter,
    iter_sse_data,
    observe_events,
    openai_chunk_tokens,
    openai_event_tokens,
    parse_openai_event,
)

STREAM = (
    'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
    'data: {"choices":[{"delta":{"content":"héllo"}}]}\r\n\r\n'
    ": a comment\n\n"
    'data: {"choices":[{"delta":{"content":"世界"}}]}\n\n'
    "event: ignored\ndata: line one\ndata: line two\n\n"
    'data: {"choices":[],"usage":{"completion_tokens":2}}\n\n'
    "data: [DONE]\n\n"
).encode()

EXPECTED = [
    '{"choices":[{"delta":{"role":"assistant","content":""}}]}',
    '{"choices":[{"delta":{"content":"héllo"}}]}',
    '{"choices":[{"delta":{"content":"世界"}}]}',
    "line one\nline two",
    '{"choices":[],"usage":{"completion_tokens":2}}',
    "[DONE]",
]


async def _chunks(data: bytes, size: int) -> AsyncIterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


async def _collect(data: bytes, size: int) -> list[str]:
    return [event async for event in iter_sse_data(_chunks(data, size))]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(STREAM)])
def test_events_survive_any_chunking(size: int) -> None:
    # size 1 and 2 split the multi-byte UTF-8 characters.
    assert asyncio.run(_collect(STREAM, size)) == EXPECTED


def test_last_event_without_trailing_blank_line() -> None:
    assert asyncio.run(_collect(b"data: a\n\ndata: b", 4)) == ["a", "b"]


def test_token_counting() -> None:
    events = [parse_openai_event(e) for e in EXPECTED if e.startswith("{")]
    assert [openai_chunk_tokens(e) for e in events] == [0, 1, 1, 0]
    assert parse_openai_event("[DONE]") is None
    assert openai_chunk_tokens(None) == 0


def test_non_object_event_is_an_error() -> None:
    with pytest.raises(ValueError, match="expected a JSON object"):
        parse_openai_event(json.dumps([1]))


def test_reasoning_refusal_and_tool_call_arguments_are_tokens() -> None:
    def chunk(delta: dict[str, object]) -> dict[str, object]:
        return {"choices": [{"index": 0, "delta": delta}]}

    tool_header = {
        "tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]
    }
    tool_piece = {"tool_calls": [{"index": 0, "function": {"arguments": '{"q": "x'}}]}
    deltas = [{"reasoning_content": "r"}, {"reasoning": "r"}, {"refusal": "no"}, tool_piece, tool_header, {}]
    assert [openai_chunk_tokens(chunk(d)) for d in deltas] == [1, 1, 1, 1, 0, 0]
    assert openai_chunk_tokens({"choices": [{"text": "once"}]}) == 1  # completions
    assert openai_chunk_tokens({"choices": [1]}) == 0  # malformed: no token, no exception


# -- in-process counting against the sidecar's parser ---------------------------------------------------------

OPENAI_CASES = [case for case in CASES if case.fmt == "openai"]


def _chunkings(stream: bytes) -> Iterable[list[bytes]]:
    yield [stream]
    yield [stream[i : i + 1] for i in range(len(stream))]
    yield chunk_at(stream, tricky_cuts(stream))  # inside every UTF-8 character, between every \r and \n
    for cut in range(0, len(stream) + 1, 7):
        yield [stream[:cut], stream[cut:]]


@pytest.mark.parametrize("case", OPENAI_CASES, ids=[case.name for case in OPENAI_CASES])
def test_in_process_counts_what_the_sidecar_counts(case: Case) -> None:
    # The same bytes, chunk by chunk, to the library's counter (TokenStreamingResponse's) and to the sidecar's
    # parser: every chunk must carry the same tokens and usage, so the first token (TTFT), every gap and the
    # totals agree. The recorded streams hold reasoning, n=2, a tool call's header and arguments, and errors.
    total = sum(event.tokens for event in case.events)
    assert total > 0
    for chunks in _chunkings(case.stream):
        counter, parser = OpenAISSECounter(), StreamParser("openai")
        in_process = [counter(chunk) for chunk in chunks] + [counter.close()]
        sidecar = [observe_events(parser.feed(chunk)) for chunk in chunks] + [observe_events(parser.close())]
        assert in_process == sidecar
        assert sum(tokens for tokens, _ in in_process) == total


@pytest.mark.parametrize("case", OPENAI_CASES, ids=[case.name for case in OPENAI_CASES])
def test_str_chunks_count_as_their_bytes(case: Case) -> None:
    # A Starlette body may yield str: cut between characters, it must count as the same bytes do.
    text = case.stream.decode()
    counter, parser = OpenAISSECounter(), StreamParser("openai")
    pieces = [text[i : i + 5] for i in range(0, len(text), 5)]
    assert [counter(piece) for piece in pieces] == [observe_events(parser.feed(piece.encode())) for piece in pieces]


def test_a_last_event_without_its_blank_line_counts_at_close() -> None:
    counter = OpenAISSECounter()
    assert counter(b'data: {"choices":[{"delta":{"reasoning_content":"r"}}]}') == (0, None)
    assert counter.close() == (1, None)


def test_one_event_counts_as_in_a_stream() -> None:
    data = '{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}],"usage":null}'
    assert openai_event_tokens(data) == (1, None)
    assert openai_event_tokens('{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}') == (0, (3, 5))
    assert openai_event_tokens("[DONE]") == (0, None)
