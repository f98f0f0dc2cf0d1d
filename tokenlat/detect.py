"""Which stream format a response is in, and the reader that detects, then parses, a response as the network cuts it.

    reader = ResponseReader(path, content_type)
    for chunk, arrived in upstream:                    # cut anywhere: 1-byte chunks, inside UTF-8, inside JSON
        for event, at in reader.feed(chunk, arrived):  # at: when the bytes that completed the event arrived
            rec.tokens(event.tokens, at)
    for event, at in reader.close(): ...               # the end of the response (at None: no chunk completed it)
    reader.format          # the detected format; None: not a token stream, or not one any format recognises
    reader.unrecognised    # it looked like a stream (an event stream or NDJSON) but no format recognised it

Detection waits for evidence; whoever relays the bytes does not wait for detection. A gateway, a slow server or TCP
re-segmentation can hand over a stream's first bytes one at a time, and the first read is then no evidence of
anything. So :class:`FormatDetector` decides as soon as the evidence allows and no sooner:

- at once when the request path and the response's content type name the format (``/v1/chat/completions`` with
  ``text/event-stream``; NDJSON is Ollama's), or when a declared content type says it is no stream at all
  (``application/json``, ``text/html`` ...);
- otherwise from the first bytes: without a content type (or with one too vague to trust: ``text/plain``,
  ``application/octet-stream``) the first non-blank bytes say whether the body is SSE; an SSE body is judged by its
  first complete event that carries data (all its ``data:`` lines joined), or by an ``event:`` line only
  Anthropic's API sends;
- or, failing that, on what there is when the response ends or when ``max_bytes`` (:data:`DETECT_BYTES` by
  default) arrived without evidence: a first event that large is judged by its start.

While the decision is pending the reader holds the chunks (at most ``max_bytes`` of them, with their arrival
times); once it is made they are parsed in order, so no event is missed and each keeps the arrival time of the
chunk that completed it.
"""

from __future__ import annotations

import re

from tokenlat.parsers import MAX_LINE_BYTES, ParserStats, StreamEvent, StreamParser, make_parser

__all__ = ["DETECT_BYTES", "FormatDetector", "ResponseReader", "TimedEvent", "detect_format"]

# The bytes detection may wait for: a first event carries a model name, an id and a token or two, well under this.
DETECT_BYTES = 16384

TimedEvent = tuple[StreamEvent, float | None]

_SSE_TYPES = frozenset({"text/event-stream"})
_NDJSON_TYPES = frozenset(
    {"application/x-ndjson", "application/ndjson", "application/jsonl", "application/x-jsonlines"}
)
_VAGUE_TYPES = frozenset({"application/octet-stream", "text/plain"})
_SSE_FORMATS = frozenset({"openai", "anthropic", "tgi", "triton", "generic"})
_SSE_FIELDS = (b"data:", b"event:", b":", b"id:", b"retry:")
_BOM = b"\xef\xbb\xbf"
_BLANK = b" \t\r\n"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_TRITON_PATH = re.compile(r"/v2/models/[^/]+(?:/versions/[^/]+)?/generate_stream$")
# Event names that only Anthropic's Messages API sends first.
_ANTHROPIC_EVENTS = frozenset({b"message_start", b"content_block_start", b"content_block_delta", b"ping"})
# A first payload, maybe cut short at the bound: key patterns, most specific first.
_PAYLOAD_PATTERNS: tuple[tuple[re.Pattern[bytes], str], ...] = (
    (re.compile(rb'"type"\s*:\s*"(?:message_start|content_block_\w+|message_delta|message_stop|ping)"'), "anthropic"),
    (re.compile(rb'"(?:text_output|model_version)"\s*:'), "triton"),
    (re.compile(rb'"token"\s*:\s*\{'), "tgi"),
    (re.compile(rb'"(?:choices"\s*:|object"\s*:\s*"(?:chat\.completion\.chunk|text_completion)")'), "openai"),
    (re.compile(rb'"(?:token|text)"\s*:\s*"'), "generic"),
)


def _format_of_path(path: str) -> str | None:
    route = path.split("?", 1)[0].rstrip("/")
    if _TRITON_PATH.search(route):  # before TGI: both end in /generate_stream
        return "triton"
    if route.endswith("/generate_stream"):
        return "tgi"
    if route.endswith("/v1/messages"):
        return "anthropic"
    if route.endswith(("/api/generate", "/api/chat")):
        return "ollama"
    if route.endswith("/completions"):  # /v1/completions, /v1/chat/completions, Azure's deployments/x/...
        return "openai"
    return None


def _format_of_payload(payload: bytes) -> str | None:
    for pattern, fmt in _PAYLOAD_PATTERNS:
        if pattern.search(payload):
            return fmt
    return None


def media_type(content_type: str | None) -> str:
    """``text/event-stream; charset=utf-8`` -> ``text/event-stream``; "" when there is none."""
    return (content_type or "").split(";", 1)[0].strip().lower()


class FormatDetector:
    """Decides one response's stream format from its path, content type and first bytes, fed as they arrive.

    ``feed`` returns True once ``decided``; ``format`` is then the format, or None for a response that is no token
    stream (or one no format recognises). ``close`` decides on the bytes seen. ``looks_like_stream``: the content
    type or the first bytes say event stream or NDJSON, whether or not a format recognised it.
    """

    __slots__ = (
        "_by_path", "_data", "_first_line", "_head", "_max", "_media_type", "_scanned", "_sse", "_start", "decided",
        "format", "looks_like_stream",
    )  # fmt: skip

    def __init__(self, path: str, content_type: str | None, *, max_bytes: int = DETECT_BYTES) -> None:
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be at least 1, got {max_bytes}")
        self.format: str | None = None
        self.decided = False
        self.looks_like_stream = False
        self._by_path = _format_of_path(path)
        self._media_type = media_type(content_type)
        self._max = max_bytes
        self._head = bytearray()  # the first bytes, at most max_bytes
        self._start = 0  # the leading blank bytes skipped so far (vague content types)
        self._sse = False  # the head is read as SSE, line by line
        self._scanned = 0  # where the next SSE line starts in the head
        self._first_line = True
        self._data: list[bytes] = []  # the data lines of the SSE event being read
        kind = self._media_type
        if kind in _SSE_TYPES:
            self._read_as_sse()
        elif kind in _NDJSON_TYPES:
            self.looks_like_stream = True
            self._decide("ollama")
        elif kind and kind not in _VAGUE_TYPES:
            self._decide(None)  # a declared non-stream type: JSON, HTML, an error page ...

    def feed(self, chunk: bytes) -> bool:
        """Add the response's next bytes; True once the format is decided."""
        if self.decided:
            return True
        self._head += chunk[: self._max - len(self._head)]
        if not self._sse:
            self._sniff_start()
        if self._sse and not self.decided:
            self._scan(final=False)
        if not self.decided and len(self._head) >= self._max:
            self.close()  # no evidence within the bound: judge what there is
        return self.decided

    def close(self) -> None:
        """Decide on the bytes seen so far: the response ended, or the bound was reached."""
        if self.decided:
            return
        if self._sse:
            self._scan(final=True)
            if not self.decided:  # an event cut short (or none): its data so far decides
                self._decide(_format_of_payload(b"\n".join(self._data)) if self._data else None)
        elif not self._head:  # no body: the path decides, unless a content type was given
            self._decide(self._by_path if not self._media_type else None)
        else:
            self._decide(None)  # the start of an SSE field name, then the end: not a stream

    # -- evidence

    def _decide(self, fmt: str | None) -> None:
        self.format, self.decided = fmt, True
        self._head = bytearray()
        self._data = []

    def _read_as_sse(self) -> None:
        self.looks_like_stream = True
        if self._by_path in _SSE_FORMATS:
            self._decide(self._by_path)  # the path names the API: the bytes need not be read
        else:
            self._sse = True

    def _sniff_start(self) -> None:
        """No content type, or a vague one: do the first non-blank bytes open SSE (or Ollama's NDJSON, on its path)?"""
        head = self._head
        if self._start == 0:
            if _BOM.startswith(head[:3]) and len(head) < 3:
                return  # part of a byte-order mark
            if head.startswith(_BOM):
                self._start = 3
        while self._start < len(head) and head[self._start] in _BLANK:
            self._start += 1
        start = bytes(head[self._start : self._start + 8])
        if not start:
            return  # nothing yet but blanks
        if start.startswith(_SSE_FIELDS):
            self._read_as_sse()
        elif any(field.startswith(start) for field in _SSE_FIELDS):
            return  # "da": wait for the rest of "data:"
        elif self._by_path == "ollama" and start[:1] == b"{":
            self.looks_like_stream = True
            self._decide("ollama")
        else:
            self._decide(None)

    def _scan(self, *, final: bool) -> None:
        """Read the complete SSE lines that arrived (and, when ``final``, a last unterminated one)."""
        head, pos = self._head, self._scanned
        while not self.decided:
            match = _LINE_END.search(head, pos)
            if match is None:
                if final and pos < len(head):
                    self._line(bytes(head[pos:]))
                    pos = len(head)
                break
            if not final and match.end() == len(head) and head[-1] == 13:
                break  # a \r last: maybe the first half of a \r\n still on its way
            self._line(bytes(head[pos : match.start()]))
            pos = match.end()
        self._scanned = pos

    def _line(self, line: bytes) -> None:
        if self._first_line:
            self._first_line = False
            if line.startswith(_BOM):
                line = line[3:]
        if not line:  # the end of an event: the first one with data decides
            if self._data:
                self._decide(_format_of_payload(b"\n".join(self._data)))
            return
        if line[:1] == b":":  # a comment (keep-alive)
            return
        field, _, value = line.partition(b":")
        if value[:1] == b" ":
            value = value[1:]
        if field == b"data":
            self._data.append(value)
        elif field == b"event" and value.strip() in _ANTHROPIC_EVENTS:
            self._decide("anthropic")


def detect_format(path: str, content_type: str | None, head: bytes = b"") -> str | None:
    """The stream format of a response whose first bytes (all there will be, as far as the caller knows) are ``head``.

    None when the response is not a token stream: a declared non-stream type (a plain JSON response, HTML, an
    error page ...) or an event stream none of the formats recognises.
    """
    detector = FormatDetector(path, content_type)
    if head:
        detector.feed(head)
    detector.close()
    return detector.format


class ResponseReader:
    """One response, its format detected and then its events parsed, as chunks arrive however they are cut.

    ``fmt``: parse as this format without detecting (the operator fixed the format, and the request asked for a
    stream). ``parse_as``: when detection finds a stream, parse it in this format rather than the detected one.
    ``parse=False`` detects only (nothing is parsed: a relay-only control run). Never raises on bad input.
    """

    __slots__ = ("_held", "_max_line", "_parse", "_parse_as", "detector", "format", "parser")

    def __init__(
        self,
        path: str,
        content_type: str | None,
        *,
        fmt: str | None = None,
        parse_as: str | None = None,
        parse: bool = True,
        detect_bytes: int = DETECT_BYTES,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        self._max_line = max_line_bytes
        self._parse = parse
        self._parse_as = parse_as
        self._held: list[tuple[bytes, float]] = []  # chunks that arrived while detection waited, with their times
        self.format: str | None = None
        self.parser: StreamParser | None = None
        self.detector: FormatDetector | None = None
        if fmt is not None:
            self._start(fmt)
        else:
            self.detector = FormatDetector(path, content_type, max_bytes=detect_bytes)
            if self.detector.decided and self.detector.format is not None:
                self._start(self.detector.format)

    @property
    def decided(self) -> bool:
        return self.detector is None or self.detector.decided

    @property
    def unrecognised(self) -> bool:
        """Decided, and not a token stream, though it looked like one (SSE or NDJSON)."""
        detector = self.detector
        return detector is not None and detector.decided and detector.format is None and detector.looks_like_stream

    @property
    def stats(self) -> ParserStats:
        return self.parser.stats if self.parser is not None else ParserStats()

    def feed(self, chunk: bytes, at: float) -> list[TimedEvent]:
        """The events this chunk completes (with the chunks held before it, once detection decides), each timed."""
        parser = self.parser
        if parser is not None:
            return [(event, at) for event in parser.feed(chunk)]
        detector = self.detector
        if detector is None or detector.decided:
            return []  # not a stream, or detection only
        self._held.append((chunk, at))
        return self._release() if detector.feed(chunk) else []

    def close(self) -> list[TimedEvent]:
        """The end of the response: decide if still undecided, then flush a last unterminated event (at None)."""
        out: list[TimedEvent] = []
        if not self.decided:
            assert self.detector is not None
            self.detector.close()
            out = self._release()
        if self.parser is not None:
            out += [(event, None) for event in self.parser.close()]
        return out

    def _start(self, fmt: str) -> None:
        self.format = self._parse_as or fmt
        if self._parse:
            self.parser = make_parser(self.format, max_line_bytes=self._max_line)

    def _release(self) -> list[TimedEvent]:
        """Detection decided: parse the chunks held meanwhile, each event with its own chunk's time."""
        held, self._held = self._held, []
        assert self.detector is not None
        if self.detector.format is None:
            return []
        self._start(self.detector.format)
        parser = self.parser
        if parser is None:
            return []
        return [(event, at) for chunk, at in held for event in parser.feed(chunk)]
