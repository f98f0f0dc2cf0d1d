"""Fuzzing what reads a response's bytes: detection and parsing together (``ResponseReader``, the sidecar's reader),
the in-process SSE reader (``tokenlat.sse.iter_sse_data``), and the payload decoders.

test_parsers.py fuzzes ``StreamParser`` alone on byte soup; here the input is every recorded stream of
tests/streams.py mutated byte by byte, and noise, in any chunking, through the whole reader a response goes through,
with small limits so that the bounds are what is tested: never an exception, the same events however the bytes
are cut, and what the reader holds never beyond its documented bounds (docs/limits.md): the bytes held for
detection at most ``detect_bytes`` plus the chunk that reached it, a partial line or an event's data at most
``max_line_bytes``.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import INTERESTING, chunked, fuzz_settings, mutated
from tests.streams import CASES
from tokenlat.detect import ResponseReader
from tokenlat.parsers import FORMATS, StreamEvent, decode_payload, request_model
from tokenlat.sse import iter_sse_data

PATHS = [
    "/v1/chat/completions", "/v1/completions", "/v1/messages", "/generate_stream", "/api/chat", "/api/generate",
    "/v2/models/m/generate_stream", "/v1/models", "/", "/x?y=/v1/messages",
]  # fmt: skip
CONTENT_TYPES = [
    None, "text/event-stream", "text/event-stream; charset=utf-8", "application/x-ndjson", "application/json",
    "text/plain", "application/octet-stream", "text/html", "",
]  # fmt: skip

# Recorded streams nearly right, noise, and long lines of either.
BODIES = st.one_of(
    st.sampled_from([case.stream for case in CASES]).flatmap(lambda stream: mutated(stream, max_edits=8)),
    st.lists(st.binary(max_size=64) | st.sampled_from(INTERESTING), max_size=40).map(b"".join),
    st.tuples(
        st.sampled_from([b"data: ", b"", b"{", b"event: "]), st.integers(1, 3000), st.sampled_from(INTERESTING)
    ).map(lambda t: t[0] + b"x" * t[1] + t[2]),
)


def read_all(reader: ResponseReader, chunks: list[bytes], detect_bytes: int, max_line: int) -> list[StreamEvent]:
    """Every event of the response, checking after each chunk that the reader holds no more than its bounds."""
    events: list[StreamEvent] = []
    for i, chunk in enumerate(chunks):
        events += [event for event, at in reader.feed(chunk, float(i))]
        held = sum(len(c) for c, _ in reader._held)
        assert held <= detect_bytes + len(chunk), "held for detection beyond detect_bytes plus one chunk"
        if reader.detector is not None:
            assert len(reader.detector._head) <= detect_bytes
        if reader.parser is not None:
            parser = reader.parser
            assert len(parser._buf) <= max_line and parser._data_size <= max_line
            assert sum(len(line) for line in parser._data) <= max_line and len(parser._event_name) <= max_line
    events += [event for event, at in reader.close()]
    return events


@fuzz_settings()
@given(
    body=BODIES,
    data=st.data(),
    path=st.sampled_from(PATHS),
    ctype=st.sampled_from(CONTENT_TYPES),
    fmt=st.none() | st.sampled_from(FORMATS),
    detect_bytes=st.sampled_from([1, 7, 64, 512, 16384]),
    max_line=st.sampled_from([1, 16, 100, 1 << 20]),
)
def test_any_bytes_any_chunking_through_the_reader(
    body: bytes, data: st.DataObject, path: str, ctype: str | None, fmt: str | None, detect_bytes: int, max_line: int
) -> None:
    def reader() -> ResponseReader:
        return ResponseReader(path, ctype, fmt=fmt, detect_bytes=detect_bytes, max_line_bytes=max_line)

    whole_reader = reader()
    whole = read_all(whole_reader, [body] if body else [], detect_bytes, max_line)
    chunks = data.draw(chunked(body), label="chunks")
    cut_reader = reader()
    assert read_all(cut_reader, chunks, detect_bytes, max_line) == whole
    assert (cut_reader.format, cut_reader.unrecognised, cut_reader.stats) == (
        whole_reader.format,
        whole_reader.unrecognised,
        whole_reader.stats,
    )
    assert all(event.tokens >= 0 for event in whole)


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def sse_data(chunks: list[bytes], max_line_chars: int) -> list[str]:
    async def collect() -> list[str]:
        return [data async for data in iter_sse_data(_stream(chunks), max_line_chars=max_line_chars)]

    return asyncio.run(collect())


@fuzz_settings(0.5)
@given(body=BODIES, data=st.data(), max_line=st.sampled_from([1, 16, 100, 1 << 20]))
def test_iter_sse_data_never_raises_and_is_chunking_invariant(body: bytes, data: st.DataObject, max_line: int) -> None:
    whole = sse_data([body], max_line)
    assert sse_data(data.draw(chunked(body), label="chunks"), max_line) == whole
    assert all(len(item) <= max_line for item in whole)


def test_iter_sse_data_holds_at_most_a_line_of_an_endless_one() -> None:
    # 16 MiB without a line end, then an event: it used to be held whole (and searched again for each chunk).
    limit, chunk = 1 << 20, b"x" * (64 << 10)
    chunks = [b"data: ", *[chunk] * 256, b"\n\n", b"data: after\n\n"]
    tracemalloc.start()
    try:
        assert sse_data(chunks, limit) == ["after"]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * limit, f"peak {peak} bytes"


# The keys the decoders look for, so that generated objects reach past their first check.
_KEYS = [
    "choices", "delta", "content", "text", "token", "usage", "prompt_tokens", "completion_tokens", "input_tokens",
    "output_tokens", "type", "message", "error", "error_type", "details", "generated_tokens", "input_length",
    "text_output", "model_name", "response", "done", "tool_calls", "function", "arguments", "model", "object",
    "index", "eval_count", "prompt_eval_count", "thinking", "content_block_delta", "message_start",
]  # fmt: skip
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True)
    | st.text(max_size=8)
    | st.sampled_from(_KEYS),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), inner),
    max_leaves=25,
)


@fuzz_settings()
@given(payload=_JSON, fmt=st.sampled_from(FORMATS))
def test_every_decoder_takes_any_json(payload: object, fmt: str) -> None:
    event = decode_payload(fmt, payload)
    assert event is None or (isinstance(event, StreamEvent) and event.tokens >= 0)


@fuzz_settings()
@given(body=st.one_of(st.binary(max_size=200), _JSON.map(lambda obj: json.dumps(obj).encode())))
def test_request_model_takes_any_body(body: bytes) -> None:
    model = request_model(body)
    assert model is None or (isinstance(model, str) and model)
