"""The measuring of an exchange: is the response a token stream, and what are its timings.

It is kept apart from the relaying on purpose: the protocols relay a chunk first (the event loop's write sends it
at once when the socket takes it, as it nearly always does) and hand it here afterwards, with the time it arrived
(``Exchange.feed``), so that no client waits for its own chunk's parse. Everything a measurement needs
(detection, the format's parser, the recorder, the counters) is reached from here; the protocols only say "a
request arrived", "a chunk arrived at t", "it ended, this way".

The recorder of an exchange is created lazily, at the first event that carries anything (a token, the model,
usage), with ``start`` = the request's arrival: the timings are the same as creating it at arrival, and
gen_ai.response.model (metric attributes are fixed when the recorder is created) can still come from the stream.
Responses that are not token streams never create one.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from opentelemetry.util.types import AttributeValue

from tokenlat import semconv
from tokenlat.detect import ResponseReader, TimedEvent, detect_format, media_type
from tokenlat.parsers import FORMATS, StreamEvent, body_model
from tokenlat.recorder import RequestRecorder, TokenMetrics
from tokenlat.sidecar import http1
from tokenlat.sidecar.models import OTHER_MODELS, ModelNames
from tokenlat.sidecar.settings import Settings
from tokenlat.sidecar.stats import PARSER_FAILURE, UNRECOGNISED_STREAMS, UPSTREAM_ERROR, SidecarStats

log = logging.getLogger("tokenlat.sidecar")

# The warnings about unrecognised streams: one per path and content type, for this many pairs (paths come from
# clients); then only the counter counts.
_WARNED_LIMIT = 100
_WARNED_PATH_CHARS = 200

# A format's name is the best default for gen_ai.provider.name; "generic" says nothing about the provider.
_PROVIDER_OF_FORMAT = {fmt: fmt for fmt in FORMATS if fmt != "generic"}
# Ollama's endpoints stream unless the body says "stream": false.
_STREAM_BY_DEFAULT_PATHS = ("/api/chat", "/api/generate")


def operation_name(path: str) -> str:
    """gen_ai.operation.name of a request path: "chat", "text_completion" or "generate"."""
    lowered = path.lower().rstrip("/")
    if "chat" in lowered or lowered.endswith("/messages"):  # OpenAI and Ollama chat, Anthropic messages
        return "chat"
    if lowered.endswith(("/completions", "/complete")):  # OpenAI legacy completions, Anthropic legacy complete
        return "text_completion"
    return "generate"


def wants_stream(path: str, body: Any) -> bool:
    """Did the request ask for a token stream? ``"stream": true`` in its JSON body, a path whose last segment
    names a stream, or Ollama's ``/api/chat`` and ``/api/generate`` unless the body says ``"stream": false``."""
    if isinstance(body, dict) and isinstance(body.get("stream"), bool):
        return bool(body["stream"])
    last = path.lower().rstrip("/").rsplit("/", 1)[-1]
    return "stream" in last or path.rstrip("/").endswith(_STREAM_BY_DEFAULT_PATHS)


def _is_empty(event: StreamEvent) -> bool:
    return (
        event.tokens <= 0
        and event.model is None
        and event.input_tokens is None
        and event.output_tokens is None
        and event.error is None
    )


def _json_or_none(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError; RecursionError: nested too deep
        return None


class Exchange:
    """One proxied request: what is known about it, and its measurement if it turns out to be a token stream."""

    def __init__(self, measurer: Measurer, path: str, fields: Mapping[bytes, bytes], arrival: float) -> None:
        self.measurer = measurer
        self.path = path
        self.arrival = arrival
        self.body: bytes | None = b""  # the request body, once it has arrived (set_body); None when too large
        settings = measurer.settings
        self.user_id = http1.text(fields.get(settings.user_id_header)) if settings.user_id_header else None
        self.request_id = http1.text(fields.get(settings.request_id_header))
        self.content_type: str | None = None  # of the response, once it has arrived
        self.classified = False  # counted as a stream or a pass-through
        self.error_status: str | None = None
        self.stream_error: str | None = None
        self.reader: ResponseReader | None = None  # detecting, then parsing, a 2xx response's body
        self.recorder: RequestRecorder | None = None
        self.response_model: str | None = None
        self._parsed_body: Any = None
        self._body_parsed = False

    # -- what the request is

    def set_body(self, body: bytes | None) -> None:
        self.body, self._body_parsed = body, False

    def parsed_body(self) -> Any:
        if not self._body_parsed:  # parsed only when needed: most successful streams never need it
            self._parsed_body, self._body_parsed = _json_or_none(self.body), True
        return self._parsed_body

    def would_be_stream(self) -> bool:
        if wants_stream(self.path, self.parsed_body()):
            return True
        # An event-stream (or NDJSON) response that ended before its first chunk. Without a content type the
        # parsers guess from the path alone, which would take every failed non-streaming chat for a stream.
        return bool(self.content_type) and detect_format(self.path, self.content_type) is not None

    def attributes(self, fmt: str | None) -> dict[str, AttributeValue]:
        settings = self.measurer.settings
        attributes: dict[str, AttributeValue] = {semconv.GEN_AI_OPERATION_NAME: operation_name(self.path)}
        provider = settings.provider or _PROVIDER_OF_FORMAT.get(fmt or settings.fmt or "")
        if provider:
            attributes[semconv.GEN_AI_PROVIDER_NAME] = provider
        models = self.measurer.models
        model = body_model(self.parsed_body())  # one parse of the body, whoever asks for it first
        if model:
            attributes[semconv.GEN_AI_REQUEST_MODEL] = models.admit(model)
        if self.response_model:
            attributes[semconv.GEN_AI_RESPONSE_MODEL] = models.admit(self.response_model)
        return attributes

    def _new_recorder(self) -> RequestRecorder:
        fmt = self.reader.format if self.reader is not None else None
        return self.measurer.metrics.request(
            self.attributes(fmt), user_id=self.user_id, request_id=self.request_id, start=self.arrival
        )

    # -- measuring a stream

    def feed(self, chunk: bytes, arrived: float) -> None:
        """Measure ``chunk``, relayed already, which arrived at ``arrived`` (by the metrics' clock); nothing when
        the response is not measured (no reader).

        At once, not queued for a later turn of the event loop: in `make bench` (100 streams) a turn read 1.9 to
        2.2 chunks on average, so a queue spared the second chunk of a turn one parse (some 10 us) and cost a
        timer a turn, which took about as much CPU as the parsing itself and put the measuring's latency at p50
        at +0.3 to +0.6 ms (docs/sidecar.md).
        """
        reader = self.reader
        if reader is None:
            return
        parser = reader.parser
        try:
            if parser is not None:
                # Detected and parsing (nearly every chunk): the events are all this chunk's, at its time. What
                # reader.feed returns then, without pairing each event with that time in a new list.
                events = parser.feed(chunk)
            else:
                timed = reader.feed(chunk, arrived)  # detecting: maybe the held chunks' events, each at its time
        except Exception:  # the parsers never raise by contract; if one does, measuring stops, relaying does not
            self._parser_failed()
            return
        if parser is not None:
            if events:
                self._observe(events, arrived)
            return
        if not self.classified and reader.decided:
            self.measurer.settle(self)
        self._observe_timed(timed)

    def _observe_timed(self, timed: list[TimedEvent]) -> None:
        for event, arrived in timed:
            self._observe((event,), arrived)

    def _observe(self, events: Iterable[StreamEvent], arrived: float | None) -> None:
        """Record ``events``, which arrived at ``arrived`` (None: with the response's end)."""
        recorder = self.recorder
        for event in events:
            if recorder is None:
                if _is_empty(event):
                    continue  # e.g. a keep-alive comment: wait for the model or a token before fixing the attributes
                self.response_model = event.model
                recorder = self.recorder = self._new_recorder()
            if event.tokens > 0:  # recorder.tokens ignores the others: spare the call on role and usage chunks
                recorder.tokens(event.tokens, arrived)
            if event.input_tokens is not None or event.output_tokens is not None:
                recorder.usage(input_tokens=event.input_tokens, output_tokens=event.output_tokens)
            if event.error is not None and self.stream_error is None:
                self.stream_error = UPSTREAM_ERROR
                self.measurer.stats.upstream_errors += 1

    def _parser_failed(self) -> None:
        log.exception("tokenlat sidecar: the %s parser failed; this stream is relayed but not measured", self.path)
        self.reader = None
        self.stream_error = PARSER_FAILURE

    # -- the end

    def finish(self, error: str | None) -> None:
        """Count and record the request, if it is one to record. ``error``: how the relay ended (None: completely)."""
        measurer = self.measurer
        flushed = self._close_reader()
        if not self.classified:  # ended before its first chunk (or before any response)
            measurer.count(self, self.error_status is None and self.would_be_stream())
        if self.error_status is not None:
            self._record_failure(self.error_status)
        elif self.reader is not None or self.stream_error == PARSER_FAILURE:
            self._finish_stream(error, flushed)
        elif error is not None and self.would_be_stream():
            # Ended before the first chunk told what the response is (or before any response): a stream the
            # client asked for.
            self._record_failure(error)

    def _close_reader(self) -> list[TimedEvent]:
        """The response's end: detection decides on what came, if it has not yet; a last unterminated event."""
        reader = self.reader
        if reader is None:
            return []
        try:
            flushed = reader.close()
        except Exception:
            self._parser_failed()
            return []
        if not self.classified:
            self.measurer.settle(self)
        return flushed

    def _finish_stream(self, error: str | None, flushed: list[TimedEvent]) -> None:
        reader = self.reader
        if reader is not None:
            self._observe_timed(flushed)
            stats = self.measurer.stats
            stats.malformed_events += reader.stats.malformed
            stats.oversized_lines += reader.stats.oversized
        if self.recorder is None:
            self.recorder = self._new_recorder()
        self.recorder.finish(error or self.stream_error)

    def _record_failure(self, error: str) -> None:
        self._new_recorder().finish(error)


class Measurer:
    """The measuring shared by every exchange of one sidecar: its settings, telemetry and counters, and the decision
    stream-or-not per response."""

    def __init__(self, settings: Settings, metrics: TokenMetrics, stats: SidecarStats) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stats = stats
        self.unrecognised = metrics.count(
            UNRECOGNISED_STREAMS, "{response}", "Responses that looked like token streams but matched no format"
        )
        self.models = ModelNames(
            metrics.count(OTHER_MODELS, "{name}", "Model names recorded as _other (beyond --model or --max-models)"),
            settings.models,
            settings.max_models,
        )
        self._warned: set[tuple[str, str]] = set()  # (path, content type) pairs warned about as unrecognised

    def exchange(self, path: str, fields: Mapping[bytes, bytes], arrival: float) -> Exchange:
        """The measuring of a request to ``path`` that arrived at ``arrival``; ``fields``: its header fields, the
        first value of each by lowercase name (``http1.by_name``)."""
        return Exchange(self, path, fields, arrival)

    def classify(self, exchange: Exchange, status: int) -> None:
        """At the response's first chunk: a 2xx response gets a reader, which tells whether it is a token stream
        (maybe only some chunks later); any other response passes through."""
        if not 200 <= status < 300:
            self.count(exchange, False)
            return
        settings = self.settings
        # A fixed format measures what the client asked to stream, even where auto-detection would not recognise it.
        asked = settings.fmt is not None and wants_stream(exchange.path, exchange.parsed_body())
        fixed = settings.fmt if asked else None
        exchange.reader = ResponseReader(
            exchange.path,
            exchange.content_type,
            fmt=fixed,
            parse_as=settings.fmt,
            parse=settings.measure,
            detect_bytes=settings.detect_bytes,
            max_line_bytes=settings.max_line_bytes,
        )
        if exchange.reader.decided:
            self.settle(exchange)

    def settle(self, exchange: Exchange) -> None:
        """The reader decided: count the response as a stream or a pass-through (and an unrecognised stream)."""
        reader = exchange.reader
        assert reader is not None
        stream = reader.format is not None
        self.count(exchange, stream)
        if reader.unrecognised:
            self._unrecognised(exchange)
        if not stream or not self.settings.measure:
            exchange.reader = None  # relayed, not measured

    def _unrecognised(self, exchange: Exchange) -> None:
        self.stats.unrecognised_streams += 1
        self.unrecognised.add()
        key = (exchange.path[:_WARNED_PATH_CHARS], media_type(exchange.content_type))
        if key in self._warned or len(self._warned) >= _WARNED_LIMIT:
            return
        self._warned.add(key)
        if self.settings.fmt is None:
            hint = f"set --format to the server's format (one of {', '.join(FORMATS)})"
        else:  # a fixed format measures only what asked for a stream
            hint = 'its request did not ask for a stream ("stream": true, or a path naming one)'
        log.warning(
            "tokenlat sidecar: a response to %r (%s) looked like a token stream but matched no format, so it is "
            "relayed without measuring (counted as unrecognised_streams); %s. Warned once per path and content type.",
            key[0], key[1] or "no content type", hint,
        )  # fmt: skip

    def count(self, exchange: Exchange, stream: bool) -> None:
        exchange.classified = True
        if stream:
            self.stats.streams += 1
        else:
            self.stats.passthrough += 1
