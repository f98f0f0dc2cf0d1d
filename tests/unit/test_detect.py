"""Format detection however the network cuts a response, and the reader that times each event by its last byte.

The recorded streams of every format (tests/streams.py) are cut everywhere: one byte at a time, at every point
hypothesis picks (inside UTF-8 characters, inside JSON, between \\r and \\n), with delays between the chunks. Each
time the reader must detect the same format, give the same events, and time each event by the arrival of the chunk
that holds the byte completing it. That byte is found here independently of the parsers (``completing_bytes``).
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.streams import CASE_IDS, CASES, Case, E, chunk_at, completing_bytes, sse, tricky_cuts
from tokenlat.detect import DETECT_BYTES, FormatDetector, ResponseReader, TimedEvent, detect_format

NO_API = "/llm/stream"  # a path that names no API: the bytes must decide


def contexts(case: Case) -> list[tuple[str, str | None]]:
    """(path, content type) of a response where detection has to read the stream (or, for NDJSON, need not)."""
    if case.fmt == "ollama":
        # NDJSON is Ollama's by its content type alone; without one, Ollama's path and a JSON first line decide.
        return [(NO_API, "application/x-ndjson"), ("/api/chat", None)]
    return [(NO_API, "text/event-stream"), (NO_API, None)]


CONTEXT_CASES = [(case, path, ctype) for case in CASES for path, ctype in contexts(case)]
CONTEXT_IDS = [f"{case.name}-{ctype or 'no-type'}" for case, _, ctype in CONTEXT_CASES]


def read(
    chunks: list[bytes], times: list[float], path: str, ctype: str | None
) -> tuple[ResponseReader, list[TimedEvent]]:
    reader = ResponseReader(path, ctype)
    timed = [timed for chunk, at in zip(chunks, times, strict=True) for timed in reader.feed(chunk, at)]
    return reader, timed + reader.close()


def expected_times(case: Case, chunks: list[bytes], times: list[float]) -> list[float | None]:
    ends = list(accumulate(len(chunk) for chunk in chunks))  # chunk i holds the bytes before ends[i]
    offsets = completing_bytes(case.stream, case.fmt == "ollama")
    return [None if offset is None else times[bisect_right(ends, offset)] for offset in offsets]


def check(case: Case, chunks: list[bytes], times: list[float], path: str, ctype: str | None) -> None:
    reader, timed = read(chunks, times, path, ctype)
    assert reader.format == case.fmt
    assert [event for event, _ in timed] == case.events
    assert [at for _, at in timed] == expected_times(case, chunks, times)
    # So TTFT (the first event with a token) and every gap come from the bytes that completed their events.


# -- the oracle -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_the_independent_oracle_finds_one_completing_byte_per_event(case: Case) -> None:
    offsets = completing_bytes(case.stream, case.fmt == "ollama")
    assert len(offsets) == len(case.events)
    terminated = [offset for offset in offsets if offset is not None]
    assert terminated == sorted(set(terminated)) and all(case.stream[i] in b"\r\n" for i in terminated)


# -- cut everywhere ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "path", "ctype"), CONTEXT_CASES, ids=CONTEXT_IDS)
def test_one_byte_at_a_time_each_event_is_timed_by_its_last_byte(case: Case, path: str, ctype: str | None) -> None:
    chunks = [case.stream[i : i + 1] for i in range(len(case.stream))]
    check(case, chunks, [float(i) for i in range(len(chunks))], path, ctype)


@pytest.mark.parametrize(("case", "path", "ctype"), CONTEXT_CASES, ids=CONTEXT_IDS)
def test_every_single_cut(case: Case, path: str, ctype: str | None) -> None:
    for cut in range(1, len(case.stream)):
        check(case, [case.stream[:cut], case.stream[cut:]], [1.0, 2.0], path, ctype)


@pytest.mark.parametrize(("case", "path", "ctype"), CONTEXT_CASES, ids=CONTEXT_IDS)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_cuts_and_delays(case: Case, path: str, ctype: str | None, data: st.DataObject) -> None:
    stream = case.stream
    cut = st.one_of(st.sampled_from(tricky_cuts(stream)), st.integers(1, len(stream) - 1))
    cuts = data.draw(st.lists(cut, max_size=80), label="cuts")
    # Often the first bytes one at a time, as a slow server or a re-segmenting gateway hands them over.
    trickle = data.draw(st.integers(0, 64), label="first bytes one at a time")
    chunks = chunk_at(stream, [*cuts, *range(1, trickle + 1)])
    delays = data.draw(
        st.lists(st.floats(1e-4, 0.5), min_size=len(chunks), max_size=len(chunks)), label="delays before each chunk"
    )
    check(case, chunks, list(accumulate(delays)), path, ctype)


# -- what detection decides, and when ------------------------------------------------------------------------------

_HEAD_OPENAI = b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","choices":[{"delta":{"role":"assistant"'
_HEAD_TGI = b'data:{"index":1,"token":{"id":9707,"text":"Hello","logprob":-0.31,"special":false},"generated'
_HEAD_TRITON = b'data: {"model_name":"ensemble","model_version":"1","text_output":"Mach'


@pytest.mark.parametrize(
    ("path", "content_type", "head", "expected"),
    [
        ("/v1/chat/completions", "text/event-stream", b"", "openai"),
        ("/v1/completions", "text/event-stream; charset=utf-8", b"", "openai"),
        ("/openai/deployments/gpt4/chat/completions?api-version=2024-10-21", "text/event-stream", b"", "openai"),
        ("/v1/chat/completions", "application/json", b'{"id":"chatcmpl-1","object":"chat.completion"}', None),
        ("/v1/chat/completions", None, _HEAD_OPENAI, "openai"),
        ("/v1/chat/completions", None, b'{"id":"chatcmpl-1","object":"chat.completion"}', None),
        ("/v1/chat/completions", "text/html", b"<html>", None),
        ("/v1/messages", "text/event-stream", b"", "anthropic"),
        ("/v1/messages", "TEXT/EVENT-STREAM", b"", "anthropic"),
        ("/v1/messages", "application/json", b'{"type":"message"}', None),
        ("/llm", "text/event-stream", b'event: message_start\r\ndata: {"type":"message_start","mes', "anthropic"),
        ("/llm", "text/event-stream", b'data: {"type":"message_start","message":{', "anthropic"),
        ("/generate_stream", "text/event-stream", b"", "tgi"),
        ("/", "text/event-stream", _HEAD_TGI, "tgi"),
        ("/generate", "application/json", b'{"generated_text":"x"}', None),
        ("/v2/models/ensemble/generate_stream", "text/event-stream", b"", "triton"),
        ("/v2/models/llama/versions/2/generate_stream", "text/event-stream", b"", "triton"),
        ("/v2/models/ensemble/generate", "application/json", b'{"text_output":"x"}', None),
        ("/infer", "text/event-stream", _HEAD_TRITON, "triton"),
        ("/api/generate", "application/x-ndjson", b"", "ollama"),
        ("/api/chat", "application/x-ndjson", b'{"model":"llama3.2","message":{', "ollama"),
        ("/api/chat", "application/json", b'{"model":"llama3.2","done":true}', None),
        ("/api/generate", None, b'{"model":"llama3.2","created_at":"2024', "ollama"),
        ("/api/chat", "text/event-stream", _HEAD_OPENAI, "openai"),  # an OpenAI-style server on that path
        ("/stream", "text/event-stream", b'data: {"token": "Hi"}\n\n', "generic"),
        ("/stream", "text/event-stream", b': ping\n\ndata: {"text": "Hi"}', "generic"),
        ("/stream", "text/event-stream", b": ping\n\n" + _HEAD_OPENAI, "openai"),
        ("/stream", "text/event-stream", b'data: {"token":\ndata: "Hi"}\n\n', "generic"),  # one event, two lines
        ("/stream", None, b'\xef\xbb\xbf\r\n\ndata: {"token": "Hi"}\n\n', "generic"),  # a byte-order mark, blank lines
        ("/stream", "text/plain", b'event: ping\ndata: {"type": "ping"}\n\n', "anthropic"),
        ("/stream", "text/event-stream", b"data: hello\n\n", None),
        ("/stream", "text/event-stream", b"", None),
        ("/stream", None, b"da", None),
        ("/health", "application/json", b'{"status":"ok"}', None),
        ("/stream", "text/plain", b"hello", None),
    ],
)
def test_detect_format(path: str, content_type: str | None, head: bytes, expected: str | None) -> None:
    assert detect_format(path, content_type, head) == expected


def test_detected_formats_parse_their_streams() -> None:
    # Detection and parsing agree: each recorded stream, sniffed from its first bytes alone, parses as expected.
    for case in CASES:
        content_type = "application/x-ndjson" if case.fmt == "ollama" else "text/event-stream"
        fmt = detect_format("/some/proxy/path", content_type, case.stream[:200])
        assert fmt == case.fmt, case.name


@pytest.mark.parametrize(
    ("content_type", "head"),
    [
        ("text/event-stream", b"da"),  # a field name cut short
        ("text/event-stream", b'data: {"token": "Hi"}\n'),  # a data line, but the event is not over
        ("text/event-stream", b": keep-alive\n\n: keep-alive\n\n"),  # comments: no event with data yet
        ("text/event-stream", b'data: {"token": "Hi"}\n\r'),  # a \r that may be half of a \r\n
        (None, b"  \r\n "),  # blanks before the stream
        (None, b"\xef\xbb"),  # part of a byte-order mark
        (None, b"eve"),
    ],
)
def test_detection_waits_for_evidence(content_type: str | None, head: bytes) -> None:
    detector = FormatDetector(NO_API, content_type)
    assert detector.feed(head) is False and not detector.decided


def test_a_declared_type_decides_before_any_byte() -> None:
    for path, content_type, expected in [
        ("/v1/chat/completions", "text/event-stream", "openai"),
        (NO_API, "application/x-ndjson", "ollama"),
        (NO_API, "application/json", None),
    ]:
        detector = FormatDetector(path, content_type)
        assert detector.decided and detector.format == expected
        assert detector.looks_like_stream is (expected is not None)


def test_a_first_event_longer_than_the_bound_is_judged_on_its_start() -> None:
    stream = sse('data: {"token": "' + "x" * 40_000 + '"}') + sse('data: {"token": "y"}')
    chunks = chunk_at(stream, list(range(100, len(stream), 100)))
    reader = ResponseReader(NO_API, "text/event-stream", detect_bytes=1024)
    decided_at = None
    events = []
    for i, chunk in enumerate(chunks):
        events += reader.feed(chunk, float(i))
        if decided_at is None and reader.decided:
            decided_at = i
    assert decided_at == 1024 // 100  # the chunk that reached the bound
    assert reader.format == "generic"
    assert [event for event, _ in events] == [E(1), E(1)]


def test_waiting_is_bounded_and_an_unrecognised_stream_is_flagged() -> None:
    keep_alives = b": keep-alive\n\n" * 100  # no event with data within the bound
    reader = ResponseReader(NO_API, "text/event-stream", detect_bytes=256)
    timed = [t for i in range(0, len(keep_alives), 10) for t in reader.feed(keep_alives[i : i + 10], float(i))]
    assert reader.decided and reader.format is None and reader.unrecognised and timed == []
    assert reader.feed(sse('data: {"token": "late"}'), 1e6) == []  # decided: the rest is relayed, not parsed

    reader = ResponseReader(NO_API, "text/event-stream")
    assert reader.feed(b"data: hello\n\n", 1.0) == [] and reader.unrecognised
    reader = ResponseReader(NO_API, "application/json")
    assert reader.feed(b'{"data": 1}', 1.0) == [] and reader.decided and not reader.unrecognised


def test_a_response_that_ends_while_detection_waits_is_decided_then() -> None:
    reader = ResponseReader(NO_API, None)
    assert reader.feed(b'data: {"token": "only"}', 1.0) == []
    assert not reader.decided
    assert reader.close() == [(E(1), None)]  # unterminated: completed by the end of the response
    assert reader.format == "generic"


def test_a_fixed_format_skips_detection_and_parse_as_renames_a_detected_one() -> None:
    fixed = ResponseReader(NO_API, "text/plain", fmt="generic")
    assert fixed.decided and fixed.format == "generic"
    assert fixed.feed(b'data: {"token": "a"}\n\n', 3.0) == [(E(1), 3.0)]
    renamed = ResponseReader("/v1/chat/completions", "text/event-stream", parse_as="generic")
    assert renamed.format == "generic"
    assert renamed.feed(b'data: {"token": "a"}\n\n', 4.0) == [(E(1), 4.0)]


def test_detection_only_parses_nothing() -> None:
    reader = ResponseReader(NO_API, "text/event-stream", parse=False)
    assert reader.feed(b'data: {"token": "a"}\n\n', 1.0) == []
    assert reader.decided and reader.format == "generic" and reader.parser is None
    assert reader.close() == []


def test_the_bound_must_be_positive() -> None:
    assert DETECT_BYTES >= 4096
    with pytest.raises(ValueError, match="max_bytes must be at least 1"):
        FormatDetector(NO_API, None, max_bytes=0)
