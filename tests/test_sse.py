"""SSE parsing of OpenAI-style streams cut at arbitrary network boundaries."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from tokenlat.sse import iter_sse_data, openai_chunk_tokens, parse_openai_event

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
