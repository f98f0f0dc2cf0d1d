"""Incremental stream parsers: recorded-style streams of every format, any chunking, bad input, bounded memory."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.streams import CASE_IDS, CASES, Case, E, chunk_at, sse, tricky_cuts
from tokenlat import parsers
from tokenlat.parsers import (
    FORMATS,
    ParserStats,
    StreamEvent,
    StreamParser,
    make_parser,
    request_model,
)


def run(fmt: str, chunks: list[bytes], **kwargs: int) -> tuple[list[StreamEvent], ParserStats]:
    parser = make_parser(fmt, **kwargs)
    events = [event for chunk in chunks for event in parser.feed(chunk)]
    events += parser.close()
    return events, parser.stats


def test_every_format_has_a_case() -> None:
    assert {case.fmt for case in CASES} == set(FORMATS)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_whole_stream(case: Case) -> None:
    events, stats = run(case.fmt, [case.stream])
    assert events == case.events
    assert stats == ParserStats(events=len(case.events))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_events_come_out_as_soon_as_they_end(case: Case) -> None:
    # A sidecar timestamps tokens when feed() returns them: nothing may wait for the next chunk or close(),
    # except a last event the server never terminated.
    parser = make_parser(case.fmt)
    events = parser.feed(case.stream)
    unterminated = case.name in ("ollama-chat", "generic")
    assert events == (case.events[:-1] if unterminated else case.events)
    assert parser.close() == (case.events[-1:] if unterminated else [])


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_byte_at_a_time(case: Case) -> None:
    events, stats = run(case.fmt, [case.stream[i : i + 1] for i in range(len(case.stream))])
    assert events == case.events
    assert stats.events == len(case.events) and stats.malformed == stats.oversized == 0


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_every_single_cut(case: Case) -> None:
    for cut in range(len(case.stream) + 1):
        events, _ = run(case.fmt, [case.stream[:cut], case.stream[cut:]])
        assert events == case.events, f"cut at byte {cut}"


def test_streams_exercise_the_hard_cuts() -> None:
    # The chunking tests only mean something if the streams hold multi-byte characters and \r\n line ends.
    for case in CASES:
        assert any(byte >= 0xF0 for byte in case.stream), f"{case.name}: no 4-byte (emoji) character"
    text = b"".join(case.stream for case in CASES)
    assert "世".encode() in text and b"\r\n" in text


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_chunking_gives_the_same_events(case: Case, data: st.DataObject) -> None:
    stream = case.stream
    tricky = tricky_cuts(stream)
    assert tricky
    cut = st.one_of(st.sampled_from(tricky), st.integers(0, len(stream)))
    cuts = data.draw(st.lists(cut, max_size=60), label="cuts")
    events, stats = run(case.fmt, chunk_at(stream, cuts))
    assert events == case.events
    assert stats == ParserStats(events=len(case.events))


def _after_blank_lines(data: bytes) -> list[int]:
    """Cuts right after every blank line: each SSE event in a chunk of its own, as the sidecar usually reads them."""
    return [i + 2 for i in range(len(data) - 1) if data[i : i + 2] == b"\n\n"]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_an_event_a_chunk_gives_the_same_events(case: Case) -> None:
    # StreamParser.feed takes a shortcut for a chunk that is one whole "data: ..." event: it must agree with the
    # general path, which the whole stream in one chunk takes.
    events, stats = run(case.fmt, chunk_at(case.stream, _after_blank_lines(case.stream)))
    assert events == case.events
    assert stats == ParserStats(events=len(case.events))


def test_the_shortcut_is_taken_for_a_whole_event(monkeypatch: pytest.MonkeyPatch) -> None:
    parser = make_parser("openai")
    event = 'data: {"model": "m", "choices": [{"delta": {"content": "a"}}]}'
    first = parser.feed(sse(event))  # the first line takes the general path: it may open with a byte-order mark
    monkeypatch.setattr(StreamParser, "_line", lambda *args: pytest.fail("the general path ran"))
    later = parser.feed(sse(event))
    assert first == later == [E(1, model="m")]


# -- SSE framing ----------------------------------------------------------------------------------------------


def test_line_ends_cr_lf_and_crlf_are_all_line_ends() -> None:
    body = b'data: {"token": "a"}\r\rdata: {"token": "b"}\n\ndata: {"token": "c"}\r\n\r\n'
    events, stats = run("generic", [body])
    assert events == [E(1), E(1), E(1)]
    assert stats.events == 3


def test_crlf_cut_between_chunks_is_one_line_end() -> None:
    parser = make_parser("generic")
    # The event is complete at the second \r: it comes out then, not when the \n arrives.
    assert parser.feed(b'data: {"token": "a"}\r\n\r') == [E(1)]
    # A \r|\n cut between two data lines of one event: the \n is not a blank line ending the event early.
    assert parser.feed(b'\ndata: {"token":\r') == []
    assert parser.feed(b'\ndata: "b"}\r') == []
    assert parser.feed(b"\n\r\n") == [E(1)]
    # A \r then a \r\n is a line end then a blank line.
    assert parser.feed(b'data: {"token": "c"}\r') == []
    assert parser.feed(b"\r\n") == [E(1)]
    assert parser.stats == ParserStats(events=3)


def test_multiline_data_joins_with_newline() -> None:
    body = b'data: {"token":\ndata: "x",\ndata:"model": "m"}\n\n'
    assert run("generic", [body])[0] == [E(1, model="m")]


def test_field_without_space_comment_unknown_fields_and_bom() -> None:
    body = (
        b'\xef\xbb\xbfid: 1\nretry: 100\n: comment\ndata:{"token":"x"}\n\n'  # BOM before the first line
        b"data\n\n"  # a data field without colon: empty data, no event
        b"event: x\n\n"  # no data: no event
    )
    events, stats = run("generic", [body])
    assert events == [E(1)]
    assert stats == ParserStats(events=1)


def test_done_gives_no_event() -> None:
    events, stats = run("openai", [b"data: [DONE]\n\n", b"data:[DONE]\n\n"])
    assert events == []
    assert stats == ParserStats()


def test_event_error_in_any_sse_format() -> None:
    body = b'event: error\ndata: {"error": {"message": "boom", "code": 503}}\n\nevent: error\ndata: upstream died\n\n'
    events, stats = run("openai", [body])
    assert events == [E(0, error="503"), E(0, error="upstream died")]
    assert stats == ParserStats(events=2)


def test_close_flushes_a_last_line_with_newline_but_no_blank_line() -> None:
    parser = make_parser("openai")
    assert parser.feed(b'data: {"model":"m","choices":[{"delta":{"content":"x"}}]}\n') == []
    assert parser.close() == [E(1, model="m")]
    assert parser.close() == []  # nothing left: a second close is harmless
    assert parser.stats.events == 1


def test_buffer_types_are_accepted() -> None:
    parser = make_parser("generic")
    assert parser.feed(bytearray(b'data: {"token": "a"}\r')) == []
    assert parser.feed(memoryview(b'\n\r\ndata: {"token": "b"}\n\n')) == [E(1), E(1)]
    assert parser.stats == ParserStats(events=2)


def test_events_are_frozen() -> None:
    event = E(1)
    with pytest.raises(FrozenInstanceError):
        event.tokens = 2  # type: ignore[misc]


# -- format details -------------------------------------------------------------------------------------------


def test_openai_reasoning_refusal_and_continuous_usage() -> None:
    body = sse(
        'data: {"model":"m","choices":[{"delta":{"reasoning":"r"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}',
        'data: {"model":"m","choices":[{"delta":{"refusal":"no"}}],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
        # Usage with choices null (some servers): still a usage report.
        'data: {"choices":null,"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    )
    events, _ = run("openai", [body])
    assert events == [
        E(1, input_tokens=3, output_tokens=1, model="m"),
        E(1, input_tokens=3, output_tokens=2, model="m"),
        E(0, input_tokens=3, output_tokens=2),
    ]


def test_anthropic_cumulative_usage_and_event_name_fallback() -> None:
    body = sse(
        'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn"},'
        '"usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":20}}',
        # No "type" in the payload: the event line names it.
        'event: content_block_delta\ndata: {"index":0,"delta":{"type":"text_delta","text":"x"}}',
        'event: some_future_event\ndata: {"type":"some_future_event"}',
    )
    events, stats = run("anthropic", [body])
    assert events == [E(0, input_tokens=15, output_tokens=20), E(1), E(0)]
    assert stats == ParserStats(events=3)


def test_counts_must_be_non_negative_integers() -> None:
    body = (
        b'{"model":"m","response":"","done":true,"prompt_eval_count":-1,"eval_count":"7"}\n'
        b'{"model":"m","response":"","done":true,"prompt_eval_count":4.0,"eval_count":true}\n'
    )
    events, _ = run("ollama", [body])
    assert events == [E(0, model="m"), E(0, input_tokens=4, model="m")]


def test_invalid_utf8_is_replaced_not_fatal() -> None:
    events, stats = run("generic", [b'data: {"token": "\xff\xfe ok"}\n\n'])
    assert events == [E(1)]
    assert stats.malformed == 0


def test_long_error_messages_are_truncated() -> None:
    events, _ = run("triton", [sse("data: " + json.dumps({"error": "x" * 5000}))])
    assert events == [E(0, error="x" * 200)]


# -- bad input ------------------------------------------------------------------------------------------------

MALFORMED = [
    ("openai", b'data: {"choices": [\n\n'),  # cut JSON
    ("openai", b'data: {"choices": null}\n\n'),
    ("openai", b'data: {"id": "x"}\n\n'),
    ("openai", b'data: {"choices": [1]}\n\n'),
    ("openai", b'data: {"choices": [{"delta": "x"}]}\n\n'),
    ("openai", b"data: [1, 2]\n\n"),
    ("openai", b'data: "a string"\n\n'),
    ("openai", b"data: 42\n\n"),
    ("openai", b"data: null\n\n"),
    ("openai", b"data: " + b"[" * 100_000 + b"\n\n"),  # nesting deep enough for RecursionError
    ("anthropic", b'event: content_block_delta\ndata: {"type":"content_block_delta","delta":[]}\n\n'),
    ("anthropic", b'data: {"type":"content_block_delta","delta":{"type":["x"]}}\n\n'),
    ("anthropic", b'event: message_start\ndata: {"type":"message_start","message":null}\n\n'),
    ("anthropic", b'data: {"index": 0}\n\n'),  # neither type nor event name
    ("tgi", b'data: {"token": "x"}\n\n'),
    ("tgi", b'data: {"generated_text": "x"}\n\n'),
    ("tgi", b'data: {"token": {"id": 1}, "details": 5}\n\n'),
    ("triton", b'data: {"text_output": 5}\n\n'),
    ("triton", b'data: {"foo": "bar"}\n\n'),
    ("ollama", b'{"model": "m", "message": "x", "done": false}\n'),
    ("ollama", b'{"status": "pulling manifest"}\n'),
    ("ollama", b"not json at all\n"),
    ("generic", b'data: {"token": 5}\n\n'),
    ("generic", b'data: {"foo": "bar"}\n\n'),
    ("generic", b"data: plain text\n\n"),
]


@pytest.mark.parametrize(("fmt", "bad"), MALFORMED)
def test_malformed_is_skipped_and_counted(fmt: str, bad: bytes) -> None:
    good = next(case for case in CASES if case.fmt == fmt)
    # The bad payload sits between two copies of a good stream: it costs exactly itself.
    events, stats = run(fmt, [good.stream + b"\n\n" + bad + good.stream])
    assert events == good.events + good.events
    assert stats == ParserStats(events=2 * len(good.events), malformed=1)


def test_oversized_line_is_dropped_with_bounded_memory() -> None:
    parser = make_parser("openai")  # the default limit: 1 MiB
    limit = 1 << 20
    line = b'data: {"model":"m","choices":[{"delta":{"content":"' + b"x" * (5 << 20) + b'"}}]}\n\n'
    peak = 0
    events: list[StreamEvent] = []
    for i in range(0, len(line), 64 << 10):
        events += parser.feed(line[i : i + (64 << 10)])
        peak = max(peak, len(parser._buf), parser._data_size)
    assert peak <= limit
    assert events == []
    assert parser.stats == ParserStats(oversized=1)
    # The stream goes on normally after it.
    assert parser.feed(b'data: {"model":"m","choices":[{"delta":{"content":"y"}}]}\n\n') == [E(1, model="m")]
    assert len(parser._buf) == 0


def test_oversized_line_in_one_chunk_is_not_buffered() -> None:
    parser = make_parser("generic", max_line_bytes=64)
    assert parser.feed(b'data: {"token": "' + b"x" * 100 + b'"}\ndata: {"token": "y"}\n\n') == []
    # The whole event lost a line: its other data line is not parsed as if it were the event.
    assert parser.stats == ParserStats(oversized=1)
    assert len(parser._buf) == 0
    assert parser.feed(b'data: {"token": "z"}\n\n') == [E(1)]


def test_line_at_the_limit_is_kept() -> None:
    line = b'data: {"token": "' + b"x" * 40 + b'"}'
    events, stats = run("generic", [line + b"\n\n"], max_line_bytes=len(line))
    assert events == [E(1)]
    events, stats = run("generic", [line + b"\n\n"], max_line_bytes=len(line) - 1)
    assert events == []
    assert stats == ParserStats(oversized=1)


def test_many_data_lines_are_bounded_too() -> None:
    parser = make_parser("generic", max_line_bytes=1000)
    peak = 0
    for _ in range(500):
        parser.feed(b"data: " + b"x" * 50 + b"\n")
        peak = max(peak, parser._data_size)
    assert peak <= 1000
    assert parser.feed(b"\n") == []
    assert parser.stats == ParserStats(oversized=1)
    assert parser.feed(b'data: {"token": "a"}\n\n') == [E(1)]


def test_oversized_ndjson_line() -> None:
    parser = make_parser("ollama", max_line_bytes=100)
    big = b'{"model":"m","response":"' + b"x" * 500 + b'","done":false}\n'
    events = [event for i in range(0, len(big), 7) for event in parser.feed(big[i : i + 7])]
    events += parser.feed(b'{"model":"m","response":"y","done":false}\n')
    assert events == [E(1, model="m")]
    assert parser.stats == ParserStats(events=1, oversized=1)
    assert parser.close() == []


# Random byte soup built from the pieces that matter: never raises, accounts for every event, stays bounded, and
# gives the same result however it is chunked.
_SOUP = st.lists(
    st.one_of(
        st.sampled_from(
            [b"data: ", b"data:", b"event: error", b"event: message_start", b": c", b"\r", b"\n", b"\r\n",
             b'{"choices":[{"delta":{"content":"x"}}]}', b'{"token":"t"}', b'{"text_output":"o"}',
             b'{"type":"content_block_delta","delta":{"type":"text_delta","text":"t"}}',
             b'{"response":"r","done":false}', b'{"token":{"id":1}}', b"[DONE]", b"{", b"}", b"[", b'"',
             "界🙂".encode(), b"\xef\xbb\xbf", b"\xff"]
        ),
        st.binary(max_size=40),
    ),
    max_size=60,
).map(b"".join)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    body=_SOUP,
    fmt=st.sampled_from(FORMATS),
    limit=st.sampled_from([16, 64, 1 << 20]),
    cuts=st.lists(st.integers(0, 3000), max_size=20),
)
def test_fuzz_never_raises_and_is_chunking_invariant(body: bytes, fmt: str, limit: int, cuts: list[int]) -> None:
    whole_events, whole_stats = run(fmt, [body], max_line_bytes=limit)
    # An event a chunk, where the shortcut of a whole event applies, gives the same as the whole body at once.
    assert run(fmt, chunk_at(body, _after_blank_lines(body)), max_line_bytes=limit) == (whole_events, whole_stats)
    parser = make_parser(fmt, max_line_bytes=limit)
    events: list[StreamEvent] = []
    for chunk in chunk_at(body, [c for c in cuts if c <= len(body)]):
        events += parser.feed(chunk)
        assert len(parser._buf) <= limit and parser._data_size <= limit
    events += parser.close()
    assert events == whole_events
    assert parser.stats == whole_stats
    assert parser.stats.events == len(events)
    assert all(isinstance(event, StreamEvent) and event.tokens >= 0 for event in events)


# -- the hot path's shortcuts, against what they replace ---------------------------------------------
#
# The parser decodes a payload with json.loads' C scanner directly, and the openai decoder has its helpers written
# out. Both are claimed to be exactly what they replace: these tests compare them, on generated input, with the
# reference they replaced (json.loads itself; the openai decoder as it was written with its helpers).

_JSON_TEXT = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
).map(lambda value: json.dumps(value, ensure_ascii=False))
_AROUND = st.sampled_from(["", " ", "\t", "\n", "\r\n", "\ufeff", "x", "}", "[DONE]", " 1", "\x00", ","])
_PAYLOADS = st.one_of(
    st.tuples(_AROUND, _JSON_TEXT, _AROUND).map("".join),
    st.text(alphabet='{}[]":,0123456789.eE+-tfnaulrsNIy \\\t\nxé🙂\x00', max_size=40),  # near-JSON soup
)


def _reference_loads(text: str) -> tuple[str, object]:
    try:
        return "ok", json.loads(text)
    except (ValueError, RecursionError) as exc:
        return "error", type(exc)


@settings(max_examples=1500, deadline=None)
@given(text=_PAYLOADS)
def test_json_shortcut_is_json_loads(text: str) -> None:
    """Where the scanner consumed the whole text, json.loads gives the same value, and where the scanner raises an
    error, json.loads raises one too; elsewhere the parser calls json.loads itself. So what the parser makes of a
    payload is json.loads' (compared by repr: NaN is not equal to itself)."""
    try:
        obj, end = parsers._scan_json(text, 0)
    except StopIteration:
        return
    except ValueError:
        assert _reference_loads(text) == ("error", json.JSONDecodeError)
        return
    if end == len(text):
        kind, expected = _reference_loads(text)
        assert kind == "ok" and repr(expected) == repr(obj)


def _reference_openai(obj: dict[str, Any], name: bytes) -> StreamEvent | None:
    """The openai decoder as it was written before its helpers were written out (the reference)."""

    def choice_has_text(choice: object) -> bool:
        choice = parsers._dict(choice)
        if parsers._text(choice.get("text")):
            return True
        delta = choice.get("delta")
        if delta is None:
            return False
        delta = parsers._dict(delta)
        for key in ("content", "reasoning_content", "reasoning", "refusal"):
            if parsers._text(delta.get(key)):
                return True
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for call in calls:
                function = call.get("function") if isinstance(call, dict) else None
                if isinstance(function, dict) and parsers._text(function.get("arguments")):
                    return True
        return False

    error = parsers._error_of(obj)
    if error is not None:
        return parsers._error_event(obj, error)
    choices = obj.get("choices")
    usage = obj.get("usage")
    has_choices = isinstance(choices, list)
    if not has_choices and not isinstance(usage, dict):
        return None
    tokens = sum(1 for choice in choices if choice_has_text(choice)) if has_choices else 0
    model = parsers._text(obj.get("model"))
    if isinstance(usage, dict):
        return StreamEvent(
            tokens,
            input_tokens=parsers._count(usage.get("prompt_tokens")),
            output_tokens=parsers._count(usage.get("completion_tokens")),
            model=model,
        )
    return StreamEvent(tokens, model=model)


def _outcome(decode: Callable[[dict[str, Any], bytes], StreamEvent | None], obj: dict[str, Any]) -> object:
    try:
        return decode(obj, b"")
    except parsers._DECODE_ERRORS:
        return "malformed"


_ANY = st.none() | st.booleans() | st.integers(-2, 3) | st.sampled_from(["", "x", "error", "m"]) | st.just([])
_TEXTS = st.sampled_from([None, "", "t", 0, 1, [], {}, True])
_CALLS = st.lists(
    st.one_of(_ANY, st.fixed_dictionaries({}, optional={"function": _ANY | st.fixed_dictionaries({}, optional={
        "arguments": _TEXTS, "name": _TEXTS})})),
    max_size=3,
)  # fmt: skip
_DELTA = st.fixed_dictionaries(
    {},
    optional={"role": _TEXTS, "content": _TEXTS, "reasoning_content": _TEXTS, "reasoning": _TEXTS,
              "refusal": _TEXTS, "tool_calls": _CALLS | _ANY},
)  # fmt: skip
_CHOICE = st.fixed_dictionaries({}, optional={"index": _ANY, "text": _TEXTS, "delta": _DELTA | _ANY,
                                              "finish_reason": _ANY}) | _ANY  # fmt: skip
_USAGE = st.fixed_dictionaries({}, optional={"prompt_tokens": _ANY | st.floats(-1, 5), "completion_tokens": _ANY})
_OPENAI_OBJECTS = st.fixed_dictionaries(
    {},
    optional={"id": _ANY, "object": st.sampled_from(["chat.completion.chunk", "error", "text_completion"]) | _ANY,
              "type": _ANY, "error": _ANY | st.fixed_dictionaries({}, optional={"type": _TEXTS, "message": _TEXTS}),
              "model": _TEXTS, "choices": st.lists(_CHOICE, max_size=3) | _ANY, "usage": _USAGE | _ANY},
)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(obj=_OPENAI_OBJECTS)
def test_openai_decoder_is_the_reference(obj: dict[str, Any]) -> None:
    """The openai decoder, written out for speed, gives what the reference gives, malformed chunks included."""
    assert _outcome(parsers._openai, obj) == _outcome(_reference_openai, obj)


@settings(max_examples=500, deadline=None)
@given(obj=_OPENAI_OBJECTS, spaces=st.booleans())
def test_openai_payload_is_the_reference(obj: dict[str, Any], spaces: bool) -> None:
    """End to end through the parser (the whole-event shortcut, the C scanner, the decoder): the events and
    counts that json.loads and the reference decoder give."""
    payload = json.dumps(obj, separators=(", ", ": ") if spaces else (",", ":")).encode()
    parser = make_parser("openai")
    parser.feed(b": open\n\n")  # past the first line, so that the next chunk takes the whole-event shortcut
    events = parser.feed(b"data: " + payload + b"\n\n")
    expected = _outcome(_reference_openai, json.loads(payload))
    if expected == "malformed" or expected is None:
        assert events == [] and parser.stats == ParserStats(malformed=1)
    else:
        assert events == [expected] and parser.stats == ParserStats(events=1)


# OpenAI's common chunk shape (parsers._OPENAI_COMMON), matched without decoding the JSON: built from its parts,
# each part right or, now and then, slightly wrong, with strings that are tricky for JSON (escapes, surrogates,
# control characters, bytes that are not UTF-8) and integers that JSON refuses.
def _mostly(right: st.SearchStrategy[bytes], wrong: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """``right`` 19 times in 20, so that whole payloads match the shape often (some 40% of them) and miss it
    by one part otherwise."""
    return st.integers(0, 19).flatmap(lambda n: wrong if n == 0 else right)


_STRING_PIECES = _mostly(
    st.sampled_from([b"a", b" ", b"\xc3\xa9", b"\xf0\x9f\x99\x82", b"\xff", b"\xe2", b"\\n", b'\\"', b"\\\\",
                     b"\\/", b"\\u00e9", b"\\ud800", b"\\uD83D\\ude42", b"\x7f"]),
    st.sampled_from([b"\\u12", b"\\x41", b"\\", b'"', b"\x01", b"\x1f", b"\t"]),
)  # fmt: skip
_STRINGS = st.lists(_STRING_PIECES, max_size=3).map(lambda pieces: b'"' + b"".join(pieces) + b'"')
_INTS = _mostly(st.sampled_from([b"0", b"17", b"1764600000", b"-1", b"-0"]),
                st.sampled_from([b"01", b"1.5", b"1e3", b'"1"']))  # fmt: skip
_DELTAS = _mostly(
    st.one_of(
        st.just(b"{}"),
        st.just(b'{"role":"assistant"}'),
        _STRINGS.map(lambda s: b'{"content":' + s + b"}"),
        _STRINGS.map(lambda s: b'{"role":"assistant","content":' + s + b"}"),
    ),
    st.sampled_from([b'{"content":null}', b'{"role":"user","content":"x"}', b'{"content":"x","role":"assistant"}',
                     b'{"reasoning_content":"x"}', b'{"content":"x",}']),
)  # fmt: skip


@st.composite
def _common_shapes(draw: st.DrawFn) -> bytes:
    def optional(piece: bytes) -> bytes:
        return piece if draw(st.booleans()) else b""

    fingerprint = optional(b',"system_fingerprint":' + draw(_mostly(_STRINGS | st.just(b"null"), _INTS)))
    finish = draw(_mostly(st.sampled_from([b"null", b'"stop"', b'"length"']), st.just(b"1")))
    stop = optional(b',"stop_reason":' + draw(_INTS | _STRINGS | st.just(b"null")))
    choice = (
        b'{"index":' + draw(_INTS) + b',"delta":' + draw(_DELTAS) + optional(b',"logprobs":null')
        + b',"finish_reason":' + finish + stop + b"}"
    )  # fmt: skip
    choices = draw(
        _mostly(st.just(b"[" + choice + b"]"), st.sampled_from([b"[" + choice + b"," + choice + b"]", b"[]"]))
    )
    obj = draw(_mostly(st.just(b'"chat.completion.chunk"'), st.sampled_from([b'"text_completion"', b'"error"'])))
    return (
        b'{"id":' + draw(_STRINGS) + b',"object":' + obj + b',"created":' + draw(_INTS)
        + b',"model":' + draw(_STRINGS) + fingerprint + b',"choices":' + choices
        + optional(b',"usage":null') + draw(_mostly(st.just(b"}"), st.sampled_from([b"} ", b"},", b""])))
    )  # fmt: skip


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payload=_common_shapes())
def test_common_openai_shape_is_what_json_gives(payload: bytes) -> None:
    """A payload of the common shape gives the event and counts of the general path (json.loads, the decoder);
    anything near it that does not match takes the general path itself."""
    shortcut, general = make_parser("openai"), make_parser("openai")
    general._common = None
    chunk = b"data: " + payload + b"\n\n"
    assert shortcut.feed(chunk) == general.feed(chunk)
    assert shortcut.stats == general.stats


def test_a_streams_first_whole_event_takes_the_shortcut(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first chunk that opens with "data: " cannot open with a byte-order mark: it is not split into lines."""
    payload = b'{"id":"a","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":'
    chunk = b"data: " + payload + b'{"content":"x"},"finish_reason":null}]}\n\n'
    monkeypatch.setattr(StreamParser, "_line", lambda *args: pytest.fail("the first chunk was split into lines"))
    parser = make_parser("openai")
    assert parser.feed(chunk) == [StreamEvent(1, model="m")]
    assert parser.feed(chunk) == [StreamEvent(1, model="m")]


def test_long_payloads_take_the_general_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Past _COMMON_MAX_BYTES the pattern is not tried: a long run of escapes costs it far more than json.loads."""
    content = b"\\n" * parsers._COMMON_MAX_BYTES
    payload = (
        b'{"id":"a","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":'
        b'{"content":"' + content + b'"},"finish_reason":null}]}'
    )
    assert parsers._OPENAI_COMMON.fullmatch(payload) is not None  # it would match
    monkeypatch.setattr(StreamParser, "_common_event", lambda *args: pytest.fail("the pattern was tried"))
    assert make_parser("openai").feed(b"data: " + payload + b"\n\n") == [StreamEvent(1, model="m")]


@pytest.mark.parametrize(
    "payload",
    [
        # vLLM 0.11 (the role chunk, a token, the last one)
        b'{"id":"chatcmpl-9f2","object":"chat.completion.chunk","created":1764600000,"model":"Qwen/Qwen3-8B",'
        b'"choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}',
        b'{"id":"chatcmpl-9f2","object":"chat.completion.chunk","created":1764600000,"model":"Qwen/Qwen3-8B",'
        b'"choices":[{"index":0,"delta":{"content":" \\u4f60\\u597d"},"logprobs":null,"finish_reason":null}]}',
        b'{"id":"chatcmpl-9f2","object":"chat.completion.chunk","created":1764600000,"model":"Qwen/Qwen3-8B",'
        b'"choices":[{"index":0,"delta":{"content":""},"logprobs":null,"finish_reason":"stop","stop_reason":null}]}',
        # OpenAI
        b'{"id":"chatcmpl-B1","object":"chat.completion.chunk","created":1764600000,"model":"gpt-4o-mini-2024-07-18",'
        b'"system_fingerprint":"fp_0ba0d124f1","choices":[{"index":0,"delta":{"content":"Hello"},"logprobs":null,'
        b'"finish_reason":null}]}',
        # the synthetic server of verify and the bench
        b'{"id":"chatcmpl-synthetic-17","object":"chat.completion.chunk","created":1764600000,"model":"m",'
        b'"choices":[{"index":0,"delta":{"content":" tok5"},"finish_reason":null}],"usage":null}',
    ],
)
def test_servers_token_chunks_take_the_common_shape(payload: bytes) -> None:
    """The shortcut is worth its place only if real servers' token chunks match it."""
    assert parsers._OPENAI_COMMON.fullmatch(payload) is not None
    expected = parsers.decode_payload("openai", json.loads(payload))
    assert make_parser("openai").feed(b"data: " + payload + b"\n\n") == [expected]


# -- request model, construction --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b'{"model": "gpt-4o-mini", "messages": [], "stream": true}', "gpt-4o-mini"),
        (b'{"model":"claude-sonnet-4-5","max_tokens":1024,"messages":[]}', "claude-sonnet-4-5"),
        ('{"model": "qwen2.5:7b", "prompt": "为什么天空是蓝色的?"}'.encode(), "qwen2.5:7b"),
        (b'\xef\xbb\xbf{"model": "m"}', "m"),
        (b'{"text_input": "hi", "parameters": {"stream": true}}', None),
        (b'{"model": 123}', None),
        (b'{"model": ""}', None),
        (b'[{"model": "m"}]', None),
        (b"model=m", None),
        (b"", None),
        (b'{"model": "m"', None),
        (b'{"model": "\xff"}\xff', None),
        (b"[" * 100_000, None),
    ],
)
def test_request_model(body: bytes, expected: str | None) -> None:
    assert request_model(body) == expected


def test_make_parser() -> None:
    for fmt in FORMATS:
        parser = make_parser(fmt)
        assert isinstance(parser, StreamParser)
        assert parser.format == fmt
        assert parser.stats == ParserStats()
    with pytest.raises(ValueError, match="unknown stream format 'vllm'") as info:
        make_parser("vllm")
    assert all(fmt in str(info.value) for fmt in FORMATS)
