"""Incremental parsers for streaming LLM responses, seen from outside the server (by a sidecar or proxy).

    parser = make_parser(fmt)                  # fmt: one of FORMATS (tokenlat.detect decides which a response is in)
    for chunk in upstream:                     # network chunks, cut anywhere
        for event in parser.feed(chunk):
            rec.tokens(event.tokens)           # 0 for role / usage / keep-alive events: a no-op
            if event.input_tokens is not None or event.output_tokens is not None:
                rec.usage(input_tokens=event.input_tokens, output_tokens=event.output_tokens)
    for event in parser.close(): ...           # a last event the server did not terminate

``decode_payload(fmt, obj)`` gives the event of one payload already decoded from JSON. The library counts an
OpenAI stream inside a service with these same rules (``tokenlat.sse``: ``OpenAISSECounter`` feeds a
``StreamParser("openai")``), so that a stream gets the same tokens and TTFT measured inside and from outside.

Counting rule, for every format: the server's usage report when present (``input_tokens``/``output_tokens``,
authoritative, recorder.usage), otherwise one token per event that carries generated text (``tokens``). A
server that packs several tokens into one event is counted once for it; its usage report corrects the total.

Every well-formed JSON payload gives exactly one ``StreamEvent`` (``tokens=0`` for role, usage, keep-alive and
metadata events), and so does an SSE ``event: error`` whose data is plain text; ``stats.events`` is the number of
events returned. What gives none: the ``[DONE]``
sentinel, empty ``data:`` payloads, SSE comments, malformed payloads (``stats.malformed``: bad JSON, a non-object,
or an object of an unexpected shape) and oversized lines (``stats.oversized``). ``error`` is a short
classification of an upstream error event, fit for error.type: the error's type or code when it names one,
else its message (at most 200 characters).

Formats
-------
openai
    SSE ``data: {chat.completion.chunk | text_completion}``, ended by ``data: [DONE]`` (no event). ``tokens`` is
    the number of choices carrying text: ``delta.content``, ``delta.reasoning_content`` / ``delta.reasoning``
    (vLLM, DeepSeek), ``delta.refusal``, ``delta.tool_calls[].function.arguments`` (tool-call arguments are
    generated tokens too), or ``text`` (completions). A ``usage`` object (the final chunk with
    ``stream_options.include_usage``, or every chunk with vLLM's continuous usage stats) gives
    ``input_tokens=prompt_tokens``, ``output_tokens=completion_tokens``. ``model`` from every chunk.
    ``{"error": {...}}`` (and vLLM's older top-level ``{"object": "error", ...}``) gives ``error``.
anthropic
    SSE with ``event:`` lines (the payload's ``type`` wins; the event name is the fallback). ``message_start``:
    ``model`` and ``input_tokens`` (``usage.input_tokens`` plus the prompt-cache fields
    ``cache_creation_input_tokens`` and ``cache_read_input_tokens``: the whole prompt, as OpenAI's
    prompt_tokens counts it). ``content_block_delta``: 1 token for a non-empty ``text_delta``,
    ``thinking_delta`` or ``input_json_delta`` (tool input); ``signature_delta`` and others carry none.
    ``message_delta``: ``usage.output_tokens`` (cumulative) as ``output_tokens``, and ``input_tokens`` when the
    newer API repeats it there. ``ping``, ``content_block_start/stop``, ``message_stop`` and event types added
    later: ``tokens=0``. ``event: error`` / ``{"type": "error", "error": {"type": "overloaded_error"}}``:
    ``error``.
tgi
    Text Generation Inference ``/generate_stream``: ``data: {"index", "token": {"id", "text", "logprob",
    "special"}, "generated_text": null | str, "details": null | {"finish_reason", "generated_tokens",
    "input_length", "seed"}}``. One token per event with a ``token`` object, whatever its text: special tokens
    (end of sequence) and tokens with empty text (part of a multi-byte character) are generated tokens, and
    ``details.generated_tokens`` counts them too. ``details`` (sent when the request asked for details) gives
    ``output_tokens=generated_tokens`` and ``input_tokens=input_length``. ``{"error", "error_type"}``:
    ``error`` is the error_type.
triton
    Triton generate extension ``/v2/models/<model>[/versions/<v>]/generate_stream``: ``data: {"model_name",
    "model_version", "text_output", ...}``: 1 token for a non-empty ``text_output`` (a list, for beams, counts
    once), ``model`` from ``model_name``. No usage. ``{"error": "..."}``: ``error``.
ollama
    NDJSON (``application/x-ndjson``) from ``/api/generate`` (``{"model", "response", "thinking", "done"}``) or
    ``/api/chat`` (``{"model", "message": {"content", "thinking", "tool_calls"}, "done"}``): 1 token for a line
    with text. The ``"done": true`` line gives ``input_tokens=prompt_eval_count`` and
    ``output_tokens=eval_count``. ``{"error": "..."}``: ``error``.
generic
    SSE ``data: {"token": "..."}`` or ``{"text": "..."}`` (``token`` may also be an object with a ``text``):
    1 token for non-empty text; ``usage`` (``prompt_tokens``/``input_tokens``,
    ``completion_tokens``/``output_tokens``) and ``model`` when present; ``[DONE]`` gives no event.

SSE framing follows the WHATWG rules: lines end with ``\\n``, ``\\r\\n`` or ``\\r`` (a ``\\r\\n`` cut between
two chunks is one line end); an event ends at a blank line; several ``data:`` lines join with ``\\n``; ``:``
comment lines are ignored; ``event:`` names the event; a leading byte-order mark is dropped. ``event: error``
marks an upstream error in every SSE format. ``close()`` flushes a last line without newline and a last event
without blank line.

Memory stays bounded: a line longer than ``max_line_bytes`` (and an SSE event whose data lines add up to more)
is dropped and counted in ``stats.oversized``; its bytes are discarded as they arrive, up to the next line end,
never buffered. The two private attributes tests may read: ``_buf``, the partial line carried between chunks
(at most ``max_line_bytes``), and ``_data_size``, the bytes of the SSE event being read (likewise bounded).
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

FORMATS: tuple[str, ...] = ("openai", "anthropic", "tgi", "triton", "ollama", "generic")

_ERROR_CHARS = 200
# A stream line (an SSE event's data) longer than this is dropped and counted, never buffered whole: a default
# far above any token chunk (a few hundred bytes) and any final usage or tool-call event.
MAX_LINE_BYTES = 1 << 20
# The C scanner behind json.loads (``JSONDecoder.scan_once``, with json.loads' default settings): see _payload.
_scan_json = json.JSONDecoder().scan_once

# The OpenAI token chunk in its common shape, as vLLM and OpenAI write it: compact JSON, these keys in this
# order, one choice whose delta holds at most the assistant role and a content string (servers whose chunks carry
# more fields take the general path). For a payload that matches it whole, what the general path (json.loads,
# then _openai) decides is fixed by two of its tokens: one token when content is a non-empty string (any JSON
# string but "" decodes to a non-empty one), none otherwise, and the model, decoded from its own JSON string.
# Matching it costs about a third of decoding the JSON, on every token of the stream (a sidecar's hot path);
# anything else, usage and errors included, takes the general path, and tests/unit/test_parsers.py checks the two
# agree on generated variants of the shape. Strings and integers are exactly JSON's (json.loads refuses control
# characters in strings, as the pattern does); bytes that are not UTF-8 match as string characters, as they
# become U+FFFD in the general path, which decodes with "replace". Only payloads up to _COMMON_MAX_BYTES are
# tried (a token chunk is a few hundred bytes): matching is linear, but an escape costs the pattern some 0.2 us,
# about 25 times what it costs json.loads, so a long payload full of escapes would be cheaper to decode than to
# fail to match (1 MB of them: 90 ms against 3 ms).
_COMMON_MAX_BYTES = 2048
_STR = rb'"[^"\\\x00-\x1f]*(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})[^"\\\x00-\x1f]*)*"'
_INT = rb"-?(?:0|[1-9][0-9]*)"
_OPENAI_COMMON = re.compile(
    rb'\{"id":' + _STR + rb',"object":"chat\.completion\.chunk","created":' + _INT
    + rb',"model":(' + _STR + rb")"
    + rb'(?:,"system_fingerprint":(?:' + _STR + rb"|null))?"
    + rb',"choices":\[\{"index":' + _INT
    + rb',"delta":\{(?:"role":"assistant"(?:,"content":(' + _STR + rb'))?|"content":(' + _STR + rb"))?\}"
    + rb'(?:,"logprobs":null)?,"finish_reason":(?:null|' + _STR + rb")"
    + rb'(?:,"stop_reason":(?:null|' + _INT + rb"|" + _STR + rb"))?\}\]"
    + rb'(?:,"usage":null)?\}'
)  # fmt: skip
_BOM = b"\xef\xbb\xbf"
_LF, _CR, _COLON = 10, 13, 58


@dataclass(frozen=True, slots=True)
class StreamEvent:
    tokens: int  # output tokens this event carries (0 for role/usage/keep-alive/metadata events)
    input_tokens: int | None = None  # authoritative counts when the event reports usage
    output_tokens: int | None = None
    model: str | None = None  # the model the response names, when the event carries it
    error: str | None = None  # an error event from upstream


@dataclass
class ParserStats:
    events: int = 0  # StreamEvents returned
    malformed: int = 0  # payloads that could not be parsed (bad JSON, unexpected shape): skipped, counted
    oversized: int = 0  # lines (or SSE events) longer than the limit: skipped, counted


class _Shape(Exception):
    """A payload that is JSON but not of the shape its format promises."""


# What a decoder raises on a payload of an unexpected shape: the payload is malformed, the parser goes on.
_DECODE_ERRORS = (_Shape, AttributeError, KeyError, TypeError, ValueError)


Decoder = Callable[[dict[str, Any], bytes], StreamEvent | None]


class StreamParser:
    """Parses one response; feed it network chunks as they come. Not thread-safe; never raises on bad input."""

    __slots__ = (
        "_buf", "_common", "_common_events", "_common_model", "_data", "_data_size", "_decode", "_discarding",
        "_event_name", "_first_line", "_max", "_poisoned", "_skip_lf", "_sse", "format", "stats",
    )  # fmt: skip

    def __init__(self, fmt: str, *, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        if fmt not in _DECODERS:
            raise ValueError(f"unknown stream format {fmt!r}: expected one of {', '.join(FORMATS)}")
        self.format = fmt
        self.stats = ParserStats()
        self._decode: Decoder = _DECODERS[fmt]
        self._sse = fmt != "ollama"
        self._max = max_line_bytes
        self._buf = bytearray()  # the partial line carried to the next chunk; never more than _max
        self._discarding = False  # inside an oversized line: drop bytes up to its end
        self._skip_lf = False  # the last chunk ended with \r: a \n opening the next one ends the same line
        self._first_line = True  # a byte-order mark may open the stream
        self._data: list[bytes] = []  # the data lines of the SSE event being read
        self._data_size = 0
        self._event_name = b""
        self._poisoned = False  # part of the SSE event being read was dropped: drop the event
        # OpenAI's common chunk shape (_OPENAI_COMMON), and the two events it gives for the model last seen.
        self._common = _OPENAI_COMMON.fullmatch if fmt == "openai" else None
        self._common_model = b""
        self._common_events: tuple[StreamEvent, ...] = ()

    def feed(self, chunk: bytes) -> list[StreamEvent]:
        """The events completed by this chunk, in order."""
        out: list[StreamEvent] = []
        if not chunk:
            return out
        if type(chunk) is not bytes:  # bytearray, memoryview: one copy, and the rest of the path stays bytes-only
            chunk = bytes(chunk)
        if (
            chunk.endswith(b"\n\n")
            and chunk.startswith(b"data: ")
            and self._sse
            and not (self._buf or self._data or self._event_name or self._skip_lf)
            and not (self._discarding or self._poisoned)
            and len(chunk) - 2 <= self._max
        ):
            # The sidecar's common case: one whole event, "data: PAYLOAD" and a blank line, in one chunk, with
            # nothing carried over. What the general path below makes of it, without splitting it into lines
            # (a sixth of what parsing a token chunk costs), when PAYLOAD holds no line end: 10 and 13 are \n and
            # \r ("in" with an int is one memchr, a tenth of the time of "in" with a bytes). A stream's first
            # chunk takes it too: one that opens with "data: " opens with no byte-order mark.
            payload = chunk[6:-2]
            if 10 not in payload and 13 not in payload:
                self._first_line = False
                self._payload(payload, b"", out)
                return out
        # splitlines splits bytes on \n, \r\n and \r only, in C, in one pass: no re-scanning of earlier data.
        pieces = chunk.splitlines(keepends=True)
        start = 0
        if self._skip_lf:
            self._skip_lf = False
            if pieces[0] == b"\n":  # the second half of a \r\n cut by the network
                start = 1
        last = len(pieces) - 1
        limit = self._max
        buf = self._buf
        for i in range(start, last + 1):
            piece = pieces[i]
            end = piece[-1]
            if end != _LF and end != _CR:
                # Only the last piece can be unterminated: carry it, unless the line is already too long.
                if self._discarding:
                    continue
                if len(buf) + len(piece) > limit:
                    self._oversized()
                    buf.clear()
                    self._discarding = True
                else:
                    buf += piece
                continue
            if end == _CR:
                size = len(piece) - 1
                if i == last:
                    self._skip_lf = True
            elif len(piece) > 1 and piece[-2] == _CR:
                size = len(piece) - 2
            else:
                size = len(piece) - 1
            if self._discarding:  # the end of an oversized line: it was counted when it overflowed
                self._discarding = False
                continue
            if buf:
                if len(buf) + size > limit:
                    self._oversized()
                    buf.clear()
                    continue
                buf += piece[:size]
                line = bytes(buf)
                buf.clear()
            elif size > limit:
                self._oversized()
                continue
            else:
                line = piece[:size]
            self._line(line, out)
        return out

    def close(self) -> list[StreamEvent]:
        """Flush the end of the stream: a last line without newline, a last SSE event without blank line."""
        out: list[StreamEvent] = []
        if self._discarding:
            self._discarding = False
        elif self._buf:
            line = bytes(self._buf)
            self._buf.clear()
            self._line(line, out)
        if self._sse:
            self._dispatch(out)
        self._skip_lf = False
        return out

    # -- framing ---------------------------------------------------------------------------------------------

    def _oversized(self) -> None:
        self.stats.oversized += 1
        if self._sse:  # the event lost a line: what is left of it must not be parsed
            self._poisoned = True
            self._data.clear()
            self._data_size = 0

    def _line(self, line: bytes, out: list[StreamEvent]) -> None:
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[3:]
        if not self._sse:  # NDJSON: a line is a payload; blank lines are keep-alives
            if line and not line.isspace():
                self._payload(line, b"", out)
            return
        if not line:
            self._dispatch(out)
            return
        if line[0] == _COLON:  # comment (keep-alive)
            return
        colon = line.find(b":")
        if colon < 0:
            field, value = line, b""
        else:
            field, value = line[:colon], line[colon + 1 :]
            if value[:1] == b" ":
                value = value[1:]
        if field == b"data":
            if self._poisoned:
                return
            size = self._data_size + len(value) + 1
            if size > self._max:  # many data lines, each within the limit: still too big
                self._oversized()
                return
            self._data_size = size
            self._data.append(value)
        elif field == b"event":
            self._event_name = value
        # id and retry matter to browsers reconnecting, not to counting tokens.

    def _dispatch(self, out: list[StreamEvent]) -> None:
        data, name, poisoned = self._data, self._event_name, self._poisoned
        if data:
            self._data = []
        self._data_size = 0
        self._event_name = b""
        self._poisoned = False
        if data and not poisoned:
            self._payload(data[0] if len(data) == 1 else b"\n".join(data), name, out)

    def _payload(self, raw: bytes, name: bytes, out: list[StreamEvent]) -> None:
        if self._common is not None and not name and len(raw) <= _COMMON_MAX_BYTES:
            match = self._common(raw)
            if match is not None:
                self.stats.events += 1
                out.append(self._common_event(*match.groups()))
                return
        # Complete lines only reach here, and line ends are ASCII, which never occurs inside a multi-byte UTF-8
        # sequence: each payload decodes on its own, whatever the chunking. Invalid bytes become U+FFFD.
        text = raw.decode("utf-8", "replace")
        event: StreamEvent | None
        try:
            # json.loads(text), without its three Python frames and two regex matches (a sixth of a token
            # chunk's parse): the C scanner json.loads runs, called directly, exactly as json.loads would call it
            # when the text starts with a value. So where the scanner consumes the whole text, its value is
            # json.loads' (json.loads would skip no whitespace before it and find none after it), and an error it
            # raises inside the value (ValueError) is the one json.loads raises. Anything else (no value at the
            # start: whitespace, a byte-order mark, [DONE]; or something after the value) goes to json.loads.
            # The only difference: the scanner runs three frames less deep, so a payload nested within three
            # levels of the recursion limit parses where json.loads raised RecursionError.
            try:
                obj, end = _scan_json(text, 0)
            except StopIteration:  # no JSON value at the start: leading whitespace, a byte-order mark, not JSON
                end = -1
            if end != len(text):
                obj = json.loads(text)
        except (ValueError, RecursionError):
            stripped = text.strip()
            if not stripped or stripped == "[DONE]":
                return
            if name != b"error":
                self.stats.malformed += 1
                return
            event = StreamEvent(0, error=stripped[:_ERROR_CHARS])  # a plain-text error message
        else:
            if not isinstance(obj, dict):
                self.stats.malformed += 1
                return
            try:
                if name == b"error":
                    event = StreamEvent(0, model=_text(obj.get("model")), error=_error_of(obj) or _error_text(obj))
                else:
                    event = self._decode(obj, name)
            except _DECODE_ERRORS:
                event = None
            if event is None:
                self.stats.malformed += 1
                return
        self.stats.events += 1
        out.append(event)

    def _common_event(self, model: bytes, content_after_role: bytes | None, content: bytes | None) -> StreamEvent:
        """The event of a chunk of OpenAI's common shape: what json.loads and _openai make of it (tested so)."""
        if model != self._common_model:  # the same in every chunk of a response: decoded once
            self._common_model = model
            name = _text(json.loads(model.decode("utf-8", "replace")))
            self._common_events = (StreamEvent(0, model=name), StreamEvent(1, model=name))  # frozen: shared
        content = content_after_role or content
        return self._common_events[content is not None and content != b'""']


def make_parser(fmt: str, *, max_line_bytes: int = MAX_LINE_BYTES) -> StreamParser:
    """A parser for one response in ``fmt`` (one of FORMATS); ValueError names the formats for any other."""
    return StreamParser(fmt, max_line_bytes=max_line_bytes)


def decode_payload(fmt: str, payload: object) -> StreamEvent | None:
    """The event a ``fmt`` parser makes of one payload already decoded from JSON (an SSE event's data, an NDJSON
    line); None where the parser counts it as malformed. ValueError names the formats for an unknown ``fmt``.

    For code that holds decoded payloads rather than the bytes (a client that parsed the events itself,
    tokenlat.sse): it counts by the very rules the sidecar counts by, so that a stream measured inside a service
    and the same stream measured from outside agree on tokens and on the first token's time. An SSE ``event:``
    name is not part of a payload: an ``event: error`` is the framing's business (:class:`StreamParser`).
    """
    decode = _DECODERS.get(fmt)
    if decode is None:
        raise ValueError(f"unknown stream format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not isinstance(payload, dict):
        return None
    try:
        return decode(payload, b"")
    except _DECODE_ERRORS:
        return None


# -- payload helpers -------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def _simple(tokens: int, model: str | None) -> StreamEvent:
    # The hot path's events (a token, a model name) repeat for a whole response: share them (they are frozen).
    return StreamEvent(tokens, model=model)


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _count(value: object) -> int | None:
    """A token count, or None for anything that is not a non-negative integer (bool, negative, string ...)."""
    if type(value) is int:
        return value if value >= 0 else None
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    return None


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _Shape
    return value


def _error_text(error: object) -> str:
    """A short classification of an error: its type or code when it names one, else its message."""
    if isinstance(error, dict):
        for key in ("type", "code", "message"):
            value = error.get(key)
            if isinstance(value, str) and value:
                return value[:_ERROR_CHARS]
            if type(value) is int:
                return str(value)
        return "error"
    if isinstance(error, str) and error:
        return error[:_ERROR_CHARS]
    return "error"


def _error_of(obj: dict[str, Any]) -> str | None:
    """The error an event reports, in any format's spelling, or None."""
    error = obj.get("error")
    if error:
        kind = obj.get("error_type")  # TGI: {"error": message, "error_type": "generation"}
        return kind[:_ERROR_CHARS] if isinstance(kind, str) and kind else _error_text(error)
    if obj.get("object") == "error":  # vLLM before the {"error": {...}} wrapper
        return _error_text(obj)
    if obj.get("type") == "error":  # Anthropic without the error object
        return "error"
    return None


def _error_event(obj: dict[str, Any], error: str) -> StreamEvent:
    return StreamEvent(0, model=_text(obj.get("model")) or _text(obj.get("model_name")), error=error)


# -- formats ---------------------------------------------------------------------------------------------------

_OPENAI_DELTA_TEXT = ("content", "reasoning_content", "reasoning", "refusal")


def _openai_tool_call_has_text(calls: object) -> bool:
    if isinstance(calls, list):
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and _text(function.get("arguments")):
                return True
    return False


def _openai(obj: dict[str, Any], name: bytes) -> StreamEvent | None:
    # Every token chunk of an OpenAI stream comes through here, so the helpers the other formats call (_error_of,
    # _text, _dict) are written out for the common case: an error-free chunk whose choices are dicts. Each test
    # below is the helper's own, in the same order, so that what raises (a malformed chunk) is unchanged.
    get = obj.get
    if get("error") or get("object") == "error" or get("type") == "error":  # exactly when _error_of is not None
        return _error_event(obj, _error_of(obj) or "error")
    choices = get("choices")
    usage = get("usage")
    has_usage = isinstance(usage, dict)
    tokens = 0
    if isinstance(choices, list):
        for choice in choices:  # one token per choice with text; a choice that is not an object: malformed
            if not isinstance(choice, dict):
                raise _Shape
            text = choice.get("text")  # text_completion
            if isinstance(text, str) and text:
                tokens += 1
                continue
            delta = choice.get("delta")
            if delta is None:
                continue
            if not isinstance(delta, dict):
                raise _Shape
            for key in _OPENAI_DELTA_TEXT:
                text = delta.get(key)
                if isinstance(text, str) and text:
                    tokens += 1
                    break
            else:
                if _openai_tool_call_has_text(delta.get("tool_calls")):
                    tokens += 1
    elif not has_usage:
        return None  # neither a chunk nor a usage report ("choices": null, {"foo": 1} ...)
    model = get("model")
    if not (isinstance(model, str) and model):  # _text
        model = None
    if has_usage:
        return StreamEvent(
            tokens,
            input_tokens=_count(usage.get("prompt_tokens")),
            output_tokens=_count(usage.get("completion_tokens")),
            model=model,
        )
    return _simple(tokens, model)


_ANTHROPIC_DELTA_TEXT = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


def _anthropic_input(usage: dict[str, Any]) -> int | None:
    tokens = _count(usage.get("input_tokens"))
    if tokens is None:
        return None
    # input_tokens leaves out the prompt-cache reads and writes: add them for the whole prompt.
    for key in ("cache_creation_input_tokens", "cache_read_input_tokens"):
        tokens += _count(usage.get(key)) or 0
    return tokens


def _anthropic(obj: dict[str, Any], name: bytes) -> StreamEvent | None:
    kind = obj.get("type")
    if not isinstance(kind, str):
        if not name:
            return None
        kind = name.decode("utf-8", "replace")
    if kind == "content_block_delta":
        delta = _dict(obj["delta"])
        key = _ANTHROPIC_DELTA_TEXT.get(delta.get("type"))  # an unhashable type raises TypeError: malformed
        return _simple(1 if key is not None and _text(delta.get(key)) else 0, None)
    if kind == "message_start":
        message = _dict(obj["message"])
        usage = message.get("usage")
        return StreamEvent(
            0,
            input_tokens=_anthropic_input(usage) if isinstance(usage, dict) else None,
            model=_text(message.get("model")),
        )
    if kind == "message_delta":
        usage = obj.get("usage")
        if not isinstance(usage, dict):
            return _simple(0, None)
        return StreamEvent(0, input_tokens=_anthropic_input(usage), output_tokens=_count(usage.get("output_tokens")))
    if kind == "error":
        return StreamEvent(0, error=_error_text(obj.get("error")))
    return _simple(0, None)  # ping, content_block_start/stop, message_stop, and event types added later


def _tgi(obj: dict[str, Any], name: bytes) -> StreamEvent | None:
    error = _error_of(obj)
    if error is not None:
        return _error_event(obj, error)
    token = obj.get("token")
    details = obj.get("details")
    if token is None and details is None:
        return None
    if token is not None:
        _dict(token)
    tokens = 0 if token is None else 1
    if details is None:
        return _simple(tokens, None)
    details = _dict(details)
    return StreamEvent(
        tokens, input_tokens=_count(details.get("input_length")), output_tokens=_count(details.get("generated_tokens"))
    )


def _triton(obj: dict[str, Any], name: bytes) -> StreamEvent | None:
    error = _error_of(obj)
    if error is not None:
        return _error_event(obj, error)
    output = obj.get("text_output")
    model = _text(obj.get("model_name"))
    if isinstance(output, str):
        has_text = bool(output)
    elif isinstance(output, list):  # several beams or a batch: still one response step
        has_text = any(_text(item) for item in output)
    elif output is None and model is not None:  # a response without text (other outputs requested)
        has_text = False
    else:
        return None
    return _simple(1 if has_text else 0, model)


def _ollama(obj: dict[str, Any], name: bytes) -> StreamEvent | None:
    error = _error_of(obj)
    if error is not None:
        return _error_event(obj, error)
    message = obj.get("message")
    if message is None and "response" not in obj and "done" not in obj:
        return None
    has_text = bool(_text(obj.get("response")) or _text(obj.get("thinking")))
    if message is not None:
        message = _dict(message)
        calls = message.get("tool_calls")
        has_text = has_text or bool(
            _text(message.get("content")) or _text(message.get("thinking")) or (isinstance(calls, list) and calls)
        )
    tokens = 1 if has_text else 0
    model = _text(obj.get("model"))
    if obj.get("done") is True:
        return StreamEvent(
            tokens,
            input_tokens=_count(obj.get("prompt_eval_count")),
            output_tokens=_count(obj.get("eval_count")),
            model=model,
        )
    return _simple(tokens, model)


def _generic(obj: dict[str, Any], name: bytes) -> StreamEvent | None:
    error = _error_of(obj)
    if error is not None:
        return _error_event(obj, error)
    text = obj.get("token")
    if isinstance(text, dict):
        text = text.get("text")
    elif text is None:
        text = obj.get("text")
    usage = obj.get("usage")
    if text is not None and not isinstance(text, str):
        return None
    if text is None and not isinstance(usage, dict):
        return None
    tokens = 1 if text else 0
    model = _text(obj.get("model"))
    if isinstance(usage, dict):
        prompt = usage.get("prompt_tokens", usage.get("input_tokens"))
        completion = usage.get("completion_tokens", usage.get("output_tokens"))
        return StreamEvent(tokens, input_tokens=_count(prompt), output_tokens=_count(completion), model=model)
    return _simple(tokens, model)


_DECODERS: dict[str, Decoder] = {
    "openai": _openai,
    "anthropic": _anthropic,
    "tgi": _tgi,
    "triton": _triton,
    "ollama": _ollama,
    "generic": _generic,
}
assert tuple(_DECODERS) == FORMATS


# -- requests ------------------------------------------------------------------------------------------------------


def request_model(body: bytes) -> str | None:
    """The "model" of a JSON request body (OpenAI, Anthropic, Ollama); None if absent or not JSON. Never raises."""
    try:
        obj = json.loads(body)
    except (ValueError, TypeError, RecursionError):
        return None
    return body_model(obj)


def body_model(obj: object) -> str | None:
    """The "model" of a request body already decoded from JSON; None when it names none."""
    return _text(obj.get("model")) if isinstance(obj, dict) else None
