"""A zero-intrusion streaming reverse proxy that measures token latency from outside the model server.

    app = create_sidecar_app("http://127.0.0.1:8000", telemetry.metrics)
    runner, port = await serve_sidecar(app, "127.0.0.1", 9000)
    ...
    begin_drain(app)          # health turns 503, new requests get 503
    await runner.cleanup()    # stops listening, lets in-flight streams finish (drain timeout), then closes

Clients talk to the sidecar instead of the server and get exactly the bytes the server sent: any method, path,
query and body; status and headers minus the hop-by-hop ones; bodies relayed chunk by chunk, never decompressed
or recompressed. When a response is a token stream (``tokenlat.detect``: from the path, the content type and its
first bytes, waiting for a complete first event however the network cuts them; or a fixed ``fmt``), the sidecar
parses a copy of each chunk and records the request's TTFT, per-token gaps, duration and usage with a
``RequestRecorder`` whose start is the request's arrival. A chunk is measured after it has been relayed (and after
the other chunks ready at that moment), with the time it arrived: measuring and detecting cost CPU, but a chunk
never waits for its own parse, nor for those of chunks that arrived with it. A response that looked like a stream
(an event stream or NDJSON) that no format recognised is relayed, counted (``unrecognised_streams``, and the
metric of that name) and warned about once per path and content type.

Failures are recorded as error.type and counted in :class:`SidecarStats` (``GET /-/tokenlat/stats``):

    upstream answers 4xx/5xx to a would-be stream    error.type = the status ("503"); the response passes through
    upstream refuses the connection                  502 + short JSON body; "upstream_unavailable"
    upstream breaks off (before or during the body)  502 before the headers; after them the client connection is
                                                     closed so the client sees a broken stream; "upstream_reset"
    client goes away                                 upstream connection closed at once (the server can stop
                                                     generating); "cancelled"
    an error event inside the stream                 still relayed as is; "upstream_error"

A "would-be stream" is a request that asked for a stream: ``"stream": true`` in its JSON body, a path whose last
segment names a stream (``generate_stream``, ``streamGenerateContent``), or Ollama's ``/api/chat`` and
``/api/generate``, which stream unless the body says ``"stream": false``. Only such requests and token-stream
responses are recorded; everything else is relayed and counted as pass-through.

The sidecar's own endpoints live under ``/-/tokenlat/``: a path segment of "-" is used by no inference API, and
the whole prefix is reserved, so a request there never reaches the upstream.

HTTP/1.1 is parsed by httptools (llhttp) on both sides, and the messages the sidecar writes are built by
``tokenlat.http1``. It is built on asyncio protocols rather than an HTTP framework because of what it does per
chunk: a response chunk goes from the upstream connection's parser callback to the client's transport in that
same callback, with no task or future woken per chunk. On aiohttp, the same proxy spent nearly twice the CPU a
chunk and added 1-3 ms at p99 on 2 cores (docs/benchmarks.md has today's figures).

A client connection serves its requests in order (pipelined ones wait their turn), each on an upstream connection
from a keep-alive pool; each hop gets its own body framing (Content-Length, chunked, or until close for an
HTTP/1.0 client); flow control runs both ways (a full client buffer pauses reading the upstream, and a slow
upstream pauses reading the client's body). Protocol upgrades are refused (501).
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import httptools
from opentelemetry.util.types import AttributeValue
from yarl import URL

from tokenlat import http1, semconv
from tokenlat.detect import DETECT_BYTES, ResponseReader, TimedEvent, detect_format, media_type
from tokenlat.parsers import FORMATS, StreamEvent, request_model
from tokenlat.recorder import CANCELLED, RequestRecorder, TokenMetrics

__all__ = [
    "CONTROL_PREFIX",
    "HEALTH_PATH",
    "STATS_PATH",
    "UNRECOGNISED_STREAMS",
    "UPSTREAM_ERROR",
    "UPSTREAM_RESET",
    "UPSTREAM_UNAVAILABLE",
    "SidecarStats",
    "begin_drain",
    "create_sidecar_app",
    "serve_sidecar",
    "sidecar_stats",
    "validate_upstream",
]

log = logging.getLogger(__name__)

CONTROL_PREFIX = "/-/tokenlat/"
STATS_PATH = CONTROL_PREFIX + "stats"
HEALTH_PATH = CONTROL_PREFIX + "health"

# error.type values of the sidecar's own failure cases (an upstream HTTP error uses its status code).
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
UPSTREAM_RESET = "upstream_reset"
UPSTREAM_ERROR = "upstream_error"
PARSER_FAILURE = "tokenlat_parser_failure"

# The counter of responses that looked like token streams but that no format recognised (relayed, not measured).
UNRECOGNISED_STREAMS = "tokenlat.sidecar.unrecognised_streams"
# The warnings about them: one per path and content type, for this many pairs (paths come from clients); then
# only the counter counts.
_WARNED_LIMIT = 100
_WARNED_PATH_CHARS = 200

# Connecting must not hang a client forever on a blackholed upstream; reading must never time out, because a
# long prompt can legitimately take minutes to its first token.
CONNECT_TIMEOUT_S = 10.0

# Request fields the proxy itself answers for: Host names the upstream, and the sidecar answers Expect:
# 100-continue itself (the body then comes to it, and it streams the body on).
_REQUEST_ONLY = (b"host", b"expect")
# Request bodies queued for an upstream connection still being opened, before the client is paused.
_PENDING_LIMIT = 1 << 20

# A format's name is the best default for gen_ai.provider.name; "generic" says nothing about the provider.
_PROVIDER_OF_FORMAT = {fmt: fmt for fmt in FORMATS if fmt != "generic"}
# Ollama's endpoints stream unless the body says "stream": false.
_STREAM_BY_DEFAULT_PATHS = ("/api/chat", "/api/generate")


@dataclass
class SidecarStats:
    """Counters of every case the sidecar handles, served as JSON at ``GET /-/tokenlat/stats``.

    ``requests`` counts every proxied request. Each one that got a response from the upstream is one of
    ``streams`` (token streams, measured) or ``passthrough`` (everything else, relayed); the others are
    ``upstream_unavailable``, ``rejected`` (503 while draining), or ended by a reset or a client disconnect before
    the upstream answered. The remaining counters overlap those: ``unrecognised_streams`` (pass-throughs that
    looked like streams), ``upstream_errors`` (4xx/5xx responses and error events inside streams),
    ``upstream_resets``, ``client_disconnects`` (including streams cut by the drain timeout), the parsers'
    malformed events and oversized lines, and ``in_flight`` (requests being proxied now).
    """

    requests: int = 0
    streams: int = 0
    passthrough: int = 0
    unrecognised_streams: int = 0
    upstream_errors: int = 0
    upstream_unavailable: int = 0
    upstream_resets: int = 0
    client_disconnects: int = 0
    malformed_events: int = 0
    oversized_lines: int = 0
    rejected: int = 0
    in_flight: int = 0


@dataclass(frozen=True)
class _Settings:
    upstream: str
    fmt: str | None
    user_id_header: bytes | None  # lowercase, as the headers are compared
    request_id_header: bytes
    provider: str | None
    max_json_body: int
    max_line_bytes: int
    detect_bytes: int
    measure: bool

    @property
    def url(self) -> URL:
        return URL(self.upstream)


# --------------------------------------------------------------------------- helpers


def validate_upstream(upstream: str) -> str:
    """The upstream base URL without a trailing slash; ValueError says what is wrong with it."""
    try:
        url = URL(upstream)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{upstream!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{upstream!r} must be an http:// or https:// URL with a host")
    if url.query_string or url.fragment:
        raise ValueError(f"{upstream!r} must not have a query or a fragment")
    if url.raw_user or url.raw_password:
        shown = str(url.with_user(None))  # never echo a secret
        raise ValueError(f"{shown!r} must not carry credentials: clients send theirs, and the sidecar relays them")
    return str(url).rstrip("/")


def operation_name(path: str) -> str:
    """gen_ai.operation.name of a request path: "chat", "text_completion" or "generate"."""
    lowered = path.lower().rstrip("/")
    if "chat" in lowered or lowered.endswith("/messages"):  # OpenAI and Ollama chat, Anthropic messages
        return "chat"
    if lowered.endswith(("/completions", "/complete")):  # OpenAI legacy completions, Anthropic legacy complete
        return "text_completion"
    return "generate"


def _wants_stream(path: str, body: Any) -> bool:
    """Did the request ask for a token stream? See the module docstring."""
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


def _text(value: bytes | None) -> str | None:
    return None if value is None else value.decode("latin-1")


def _json_error(status: int, kind: str, message: str, *, close: bool = False) -> bytes:
    # OpenAI's error shape, which every OpenAI-compatible client knows how to show.
    return http1.json_response(status, {"error": {"message": message, "type": kind, "code": status}}, close=close)


def _json_or_none(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        return None


# --------------------------------------------------------------------------- one exchange


class _Exchange:
    """One proxied request: what is known about it, and its measurement if it turns out to be a token stream.

    The recorder is created lazily, at the first event that carries anything (a token, the model, usage), with
    ``start`` = the request's arrival: the timings are the same as creating it at arrival, and
    gen_ai.response.model (metric attributes are fixed when the recorder is created) can still come from the
    stream. Responses that are not token streams never create one.
    """

    def __init__(self, proxy: _Proxy, path: str, headers: http1.Headers, arrival: float) -> None:
        self.proxy = proxy
        self.path = path
        self.arrival = arrival
        self.body: bytes | None = b""  # the request body, once it has arrived (set_body); None when too large
        settings = proxy.settings
        self.user_id = _text(http1.header(headers, settings.user_id_header)) if settings.user_id_header else None
        self.request_id = _text(http1.header(headers, settings.request_id_header))
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
        if _wants_stream(self.path, self.parsed_body()):
            return True
        # An event-stream (or NDJSON) response that ended before its first chunk. Without a content type the
        # parsers guess from the path alone, which would take every failed non-streaming chat for a stream.
        return bool(self.content_type) and detect_format(self.path, self.content_type) is not None

    def attributes(self, fmt: str | None) -> dict[str, AttributeValue]:
        settings = self.proxy.settings
        attributes: dict[str, AttributeValue] = {semconv.GEN_AI_OPERATION_NAME: operation_name(self.path)}
        provider = settings.provider or _PROVIDER_OF_FORMAT.get(fmt or settings.fmt or "")
        if provider:
            attributes[semconv.GEN_AI_PROVIDER_NAME] = provider
        model = request_model(self.body) if self.body else None
        if model:
            attributes[semconv.GEN_AI_REQUEST_MODEL] = model
        if self.response_model:
            attributes[semconv.GEN_AI_RESPONSE_MODEL] = self.response_model
        return attributes

    def _new_recorder(self) -> RequestRecorder:
        fmt = self.reader.format if self.reader is not None else None
        return self.proxy.metrics.request(
            self.attributes(fmt), user_id=self.user_id, request_id=self.request_id, start=self.arrival
        )

    # -- measuring a stream

    def feed(self, chunk: bytes, arrived: float) -> None:
        """Measure a chunk that arrived at ``arrived`` (by the metrics' clock)."""
        reader = self.reader
        if reader is None:
            return
        try:
            events = reader.feed(chunk, arrived)
        except Exception:  # the parsers never raise by contract; if one does, measuring stops, relaying does not
            self._parser_failed()
            return
        if not self.classified and reader.decided:
            self.proxy.settle(self)
        self._observe(events)

    def _observe(self, events: list[TimedEvent]) -> None:
        for event, arrived in events:
            if self.recorder is None:
                if _is_empty(event):
                    continue  # e.g. a keep-alive comment: wait for the model or a token before fixing the attributes
                self.response_model = event.model
                self.recorder = self._new_recorder()
            recorder = self.recorder
            recorder.tokens(event.tokens, arrived)
            if event.input_tokens is not None or event.output_tokens is not None:
                recorder.usage(input_tokens=event.input_tokens, output_tokens=event.output_tokens)
            if event.error is not None and self.stream_error is None:
                self.stream_error = UPSTREAM_ERROR
                self.proxy.stats.upstream_errors += 1

    def _parser_failed(self) -> None:
        log.exception("tokenlat sidecar: the %s parser failed; this stream is relayed but not measured", self.path)
        self.reader = None
        self.stream_error = PARSER_FAILURE

    # -- the end

    def finish(self, error: str | None) -> None:
        """Count and record the request, if it is one to record. ``error``: how the relay ended (None: completely)."""
        self.proxy.measure_now()
        flushed = self._close_reader()
        if not self.classified:  # ended before its first chunk (or before any response)
            self.proxy.count(self, self.error_status is None and self.would_be_stream())
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
            self.proxy.settle(self)
        return flushed

    def _finish_stream(self, error: str | None, flushed: list[TimedEvent]) -> None:
        reader = self.reader
        if reader is not None:
            self._observe(flushed)
            stats = self.proxy.stats
            stats.malformed_events += reader.stats.malformed
            stats.oversized_lines += reader.stats.oversized
        if self.recorder is None:
            self.recorder = self._new_recorder()
        self.recorder.finish(error or self.stream_error)

    def _record_failure(self, error: str) -> None:
        self._new_recorder().finish(error)


# --------------------------------------------------------------------------- the proxy


class _Proxy:
    """Settings, telemetry, counters, the upstream connection pool and the client connections of one sidecar.

    ``create_sidecar_app`` returns one; ``serve_sidecar`` serves it.
    """

    def __init__(self, settings: _Settings, metrics: TokenMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stats = SidecarStats()
        self.draining = False
        url = settings.url
        self.upstream_host = url.raw_host or ""
        self.upstream_port = url.port or (443 if url.scheme == "https" else 80)
        self.upstream_ssl = ssl.create_default_context() if url.scheme == "https" else None
        self.upstream_authority = url.raw_authority.encode()
        self.upstream_prefix = url.raw_path.rstrip("/").encode()
        self.idle: list[_Upstream] = []  # kept-alive upstream connections, most recently used last
        self.clients: set[_Client] = set()
        self.idle_event = asyncio.Event()  # set whenever no request is in flight
        self.idle_event.set()
        self._connecting: set[asyncio.Task[None]] = set()
        self.unrecognised = metrics.count(
            UNRECOGNISED_STREAMS, "{response}", "Responses that looked like token streams but matched no format"
        )
        self._warned: set[tuple[str, str]] = set()  # (path, content type) pairs warned about as unrecognised
        # Chunks relayed but not yet measured, in arrival order, and whether a callback will measure them.
        self._unmeasured: list[tuple[_Exchange, bytes, float]] = []
        self._measure_scheduled = False

    # -- in flight

    def started(self) -> None:
        self.stats.in_flight += 1
        self.idle_event.clear()

    def ended(self) -> None:
        self.stats.in_flight -= 1
        if self.stats.in_flight == 0:
            self.idle_event.set()

    # -- upstream connections

    def lease(self, hop: _Hop) -> None:
        """Give ``hop`` a kept-alive upstream connection, or open one for it."""
        while self.idle:
            upstream = self.idle.pop()
            if not upstream.transport.is_closing():
                hop.attach(upstream)
                return
        task = asyncio.get_running_loop().create_task(self._connect(hop))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, hop: _Hop) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Upstream(self),
                    self.upstream_host,
                    self.upstream_port,
                    ssl=self.upstream_ssl,
                    server_hostname=self.upstream_host if self.upstream_ssl else None,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            hop.unavailable(f"upstream unavailable: {exc or type(exc).__name__}")
            return
        if hop.finished:  # the client left while the connection was being opened
            upstream.transport.close()
            return
        hop.attach(upstream)

    def release(self, upstream: _Upstream) -> None:
        if self.draining or upstream.transport.is_closing():
            upstream.transport.close()
        else:
            self.idle.append(upstream)

    # -- measuring

    def measure_later(self, exchange: _Exchange, chunk: bytes, arrived: float) -> None:
        """Measure ``chunk`` once the chunks that arrive with it, and in the event loop's next turn, are relayed.

        Chunks of many streams often arrive together. Relaying them all before parsing any means no client waits
        for another stream's parse; the timings are unaffected, as each chunk carries its arrival time. A timer
        due at once runs after the next turn's I/O callbacks (call_soon would run before them), so the chunks
        that arrive meanwhile are relayed first too.
        """
        if exchange.reader is None:
            return
        self._unmeasured.append((exchange, chunk, arrived))
        if not self._measure_scheduled:
            self._measure_scheduled = True
            asyncio.get_running_loop().call_later(0, self.measure_now)

    def measure_now(self) -> None:
        """Measure every chunk waiting (also called before a stream is finished, so that none is left out)."""
        self._measure_scheduled = False
        unmeasured, self._unmeasured = self._unmeasured, []
        for exchange, chunk, arrived in unmeasured:
            exchange.feed(chunk, arrived)

    def classify(self, exchange: _Exchange, status: int) -> None:
        """At the response's first chunk: a 2xx response gets a reader, which tells whether it is a token stream
        (maybe only some chunks later); any other response passes through."""
        if not 200 <= status < 300:
            self.count(exchange, False)
            return
        settings = self.settings
        # A fixed format measures what the client asked to stream, even where auto-detection would not recognise it.
        wants_stream = settings.fmt is not None and _wants_stream(exchange.path, exchange.parsed_body())
        fixed = settings.fmt if wants_stream else None
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

    def settle(self, exchange: _Exchange) -> None:
        """The reader decided: count the response as a stream or a pass-through (and an unrecognised stream)."""
        reader = exchange.reader
        assert reader is not None
        stream = reader.format is not None
        self.count(exchange, stream)
        if reader.unrecognised:
            self._unrecognised(exchange)
        if not stream or not self.settings.measure:
            exchange.reader = None  # relayed, not measured

    def _unrecognised(self, exchange: _Exchange) -> None:
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

    def count(self, exchange: _Exchange, stream: bool) -> None:
        exchange.classified = True
        if stream:
            self.stats.streams += 1
        else:
            self.stats.passthrough += 1

    # -- the sidecar's own endpoints

    def control(self, method: bytes, path: str) -> bytes:
        if path not in (HEALTH_PATH, STATS_PATH):
            return _json_error(404, "not_found", f"{path} is reserved for the tokenlat sidecar")
        if method != b"GET":
            return _json_error(405, "method_not_allowed", f"{path} answers GET only")
        if path == STATS_PATH:
            return http1.json_response(200, {**asdict(self.stats), "draining": self.draining})
        if self.draining:
            return http1.json_response(503, {"status": "draining"})
        return http1.json_response(200, {"status": "serving"})


@dataclass
class _Request:
    """A request head as httptools parsed it."""

    method: bytes
    target: bytes  # path and query exactly as received: never re-encoded
    path: str  # decoded, for the sidecar's own decisions
    headers: list[tuple[bytes, bytes]]
    version: str
    keep_alive: bool
    arrival: float
    chunked: bool = field(init=False)  # the body arrives chunked

    def __post_init__(self) -> None:
        self.chunked = http1.header(self.headers, b"transfer-encoding") is not None

    def upstream_head(self, proxy: _Proxy) -> bytes:
        fields = http1.end_to_end(self.headers, _REQUEST_ONLY)
        fields.insert(0, (b"Host", proxy.upstream_authority))
        if self.chunked:
            fields.append((b"Transfer-Encoding", b"chunked"))
        elif (length := http1.header(self.headers, b"content-length")) is not None:
            fields.append((b"Content-Length", length))
        return http1.request_head(self.method, proxy.upstream_prefix + self.target, fields)


class _Hop:
    """One request relayed: the client's request to an upstream connection, its response back, and its measure.

    The response's body goes from the upstream connection's parser straight to the client's transport, in the
    same callback: no task wakes up per chunk.
    """

    def __init__(self, proxy: _Proxy, client: _Client, request: _Request) -> None:
        self.proxy = proxy
        self.client = client
        self.request = request
        self.exchange = _Exchange(proxy, request.path, request.headers, request.arrival)
        self.upstream: _Upstream | None = None
        self.pending: list[bytes] = []  # framed body bytes waiting for the upstream connection
        self.pending_size = 0
        self.prefix = bytearray()  # the body's first bytes, for its model and stream flag
        self.body_done = False
        self.status = 0
        self.framing: str | None = None  # of the response to the client: "length", "chunked", "close" or None
        self.close_client = False
        self.started = False
        self.response_started = False
        self.finished = False

    # -- the request, client to upstream

    def start(self) -> None:
        expect = http1.header(self.request.headers, b"expect")
        if expect is not None and expect.lower() == b"100-continue" and not self.body_done:
            self.client.write(http1.CONTINUE)  # the body then comes here, and goes on from here
        self.started = True
        self.proxy.started()
        self.proxy.lease(self)

    def attach(self, upstream: _Upstream) -> None:
        self.upstream = upstream
        upstream.hop = self
        if self.client.write_paused:  # the client is still taking an earlier response: read at its pace
            upstream.transport.pause_reading()
        upstream.transport.write(self.request.upstream_head(self.proxy) + b"".join(self.pending))
        self.pending.clear()
        self.pending_size = 0
        self.client.resume_reading()

    def body(self, data: bytes) -> None:
        limit = self.proxy.settings.max_json_body
        if self.exchange.body is not None:
            self.prefix += data
            if len(self.prefix) > limit:
                self.exchange.set_body(None)
                self.prefix = bytearray()
        framed = http1.chunk(data) if self.request.chunked else data
        self._send(framed)

    def body_end(self) -> None:
        self.body_done = True
        if self.exchange.body is not None:
            self.exchange.set_body(bytes(self.prefix))
        if self.request.chunked:
            self._send(http1.LAST_CHUNK)

    def _send(self, data: bytes) -> None:
        if self.finished:
            return
        if self.upstream is not None:
            self.upstream.transport.write(data)
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.pending_size > _PENDING_LIMIT:
            self.client.pause_reading()

    # -- the response, upstream to client

    def response_head(self, status: int, reason: bytes, headers: http1.Headers) -> bool:
        """Relay a response head; False when it was an interim (1xx) one, and the real response is still to come."""
        client, request, exchange = self.client, self.request, self.exchange
        if 100 <= status < 200:
            client.write(http1.response_head(status, reason, http1.end_to_end(headers)))
            return False
        self.status = status
        exchange.content_type = _text(http1.header(headers, b"content-type"))
        if status >= 400:
            self.proxy.stats.upstream_errors += 1
            if exchange.would_be_stream():
                exchange.error_status = str(status)
        fields = http1.end_to_end(headers)
        length = http1.header(headers, b"content-length")
        chunked = http1.header(headers, b"transfer-encoding") is not None
        if request.method == b"HEAD" or status in (204, 304):
            self.framing = None
            if length is not None:
                fields.append((b"Content-Length", length))
        elif length is not None and not chunked:
            self.framing = "length"
            fields.append((b"Content-Length", length))
        elif request.version == "1.1":
            self.framing = "chunked"
            fields.append((b"Transfer-Encoding", b"chunked"))
        else:
            self.framing = "close"  # an HTTP/1.0 client: the end of the body is the end of the connection
        self.close_client = self.framing == "close" or not request.keep_alive or self.proxy.draining
        if self.close_client:
            fields.append((b"Connection", b"close"))
        client.write(http1.response_head(status, reason, fields))
        self.response_started = True
        return True

    def response_body(self, data: bytes, arrived: float) -> None:
        if not data or self.finished:
            return
        self.client.write(http1.chunk(data) if self.framing == "chunked" else data)
        exchange = self.exchange
        if not exchange.classified and exchange.reader is None:
            self.proxy.classify(exchange, self.status)
        self.proxy.measure_later(exchange, data, arrived)

    def response_end(self, reusable: bool) -> None:
        """The response is complete; ``reusable``: the upstream connection may serve another request."""
        if self.framing == "chunked":
            self.client.write(http1.LAST_CHUNK)
        upstream = self.upstream
        self._finish(None)
        if upstream is not None:
            upstream.hop = None
            if reusable and self.body_done:
                upstream.transport.resume_reading()  # paused for this client, maybe: the next one may be faster
                self.proxy.release(upstream)
            else:
                upstream.transport.close()
        self.client.hop_done(self)

    # -- failures

    def unavailable(self, message: str) -> None:
        if self.finished:
            return
        self.proxy.stats.upstream_unavailable += 1
        self._finish(UPSTREAM_UNAVAILABLE)
        self._answer_error(UPSTREAM_UNAVAILABLE, message)

    def upstream_broke(self, message: str) -> None:
        """The upstream connection closed or sent garbage before the response was complete."""
        if self.finished:
            return
        self.proxy.stats.upstream_resets += 1
        if self.upstream is not None:
            self.upstream.hop = None
            self.upstream.transport.close()
        self._finish(UPSTREAM_RESET)
        if self.response_started:
            # What was relayed stays relayed; closing without the body's end shows the client a broken stream,
            # as the upstream's own connection would have.
            self.client.close()
        else:
            self._answer_error(UPSTREAM_RESET, f"upstream closed the connection or answered garbage: {message}")

    def client_gone(self) -> None:
        if self.finished:
            return
        self.proxy.stats.client_disconnects += 1
        if self.upstream is not None:  # stop reading: the upstream sees the disconnect and can stop generating
            self.upstream.hop = None
            self.upstream.transport.close()
        self._finish(CANCELLED)

    def _answer_error(self, kind: str, message: str) -> None:
        """A 502 of the sidecar's own; the connection closes after it when the request's body is not all read."""
        self.close_client = not self.body_done or not self.request.keep_alive or self.proxy.draining
        self.client.write(_json_error(502, kind, message, close=self.close_client))
        self.client.hop_done(self)

    def _finish(self, error: str | None) -> None:
        self.finished = True
        self.exchange.finish(error)
        self.proxy.ended()


class _HeadReader:
    """What httptools reports of a message head, as it comes: the request target (on_url) or the reason phrase
    (on_status), and the header fields, raw."""

    def __init__(self) -> None:
        self._start_line = bytearray()
        self._headers: list[tuple[bytes, bytes]] = []

    def on_message_begin(self) -> None:
        self._start_line.clear()
        self._headers = []

    def on_url(self, url: bytes) -> None:
        self._start_line += url

    on_status = on_url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))


@dataclass(frozen=True)
class _Answer:
    """A whole response of the sidecar's own (its endpoints, refusals), and whether the connection closes after."""

    response: bytes
    close: bool = False

    @classmethod
    def error(cls, status: int, kind: str, message: str) -> _Answer:
        """A refusal: the connection closes after it, as what follows on it cannot be trusted or is not wanted."""
        return cls(_json_error(status, kind, message, close=True), close=True)


class _Client(_HeadReader, asyncio.Protocol):
    """One client connection: its requests parsed by httptools and relayed one at a time, in order."""

    def __init__(self, proxy: _Proxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.hops: deque[_Hop | _Answer] = deque()  # in the order of the requests; the first is being answered
        self.parsing: _Hop | _Answer | None = None
        self._paused = False
        self.write_paused = False

    # -- the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        _no_delay(transport)
        self.proxy.clients.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.proxy.clients.discard(self)
        self.transport = None
        for item in self.hops:
            if isinstance(item, _Hop) and item.started:  # only the first; the ones queued behind never started
                item.client_gone()
        self.hops.clear()

    @property
    def active(self) -> _Hop | _Answer | None:
        return self.hops[0] if self.hops else None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause_reading(self) -> None:
        if self.transport is not None and not self._paused:
            self._paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and self._paused and len(self.hops) <= 1:
            self._paused = False
            self.transport.resume_reading()

    # Flow control, response side: a slow client slows the reading of its upstream (and TCP, the upstream).
    def pause_writing(self) -> None:
        self.write_paused = True
        hop = self.active
        if isinstance(hop, _Hop) and hop.upstream is not None:
            hop.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        hop = self.active
        if isinstance(hop, _Hop) and hop.upstream is not None:
            hop.upstream.transport.resume_reading()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.pause_reading()  # refused at its head (on_headers_complete); the connection closes after it
        except httptools.HttpParserError as exc:
            self._refuse(400, "bad_request", f"malformed HTTP request: {exc}")

    def _refuse(self, status: int, kind: str, message: str) -> None:
        """A request that cannot be parsed: answered once those before it are, then the connection closes."""
        self.pause_reading()  # nothing more is read from this connection
        if isinstance(self.parsing, _Hop):  # broken inside a body already on its way: no answer can follow it
            self.close()
            return
        self.hops.append(_Answer.error(status, kind, message))
        self.parsing = None
        if len(self.hops) == 1:
            self._next()

    # -- httptools callbacks (and _HeadReader's)

    def on_headers_complete(self) -> None:
        proxy, parser = self.proxy, self.parser
        arrival = proxy.metrics.clock()
        target = bytes(self._start_line)
        path = _decoded_path(target)
        if path.startswith(CONTROL_PREFIX):
            self.parsing = _Answer(proxy.control(parser.get_method(), path))
        elif parser.should_upgrade():
            message = "the tokenlat sidecar does not relay protocol upgrades (WebSocket, h2c)"
            self.parsing = _Answer.error(501, "not_implemented", message)
        else:
            proxy.stats.requests += 1
            if proxy.draining:
                proxy.stats.rejected += 1
                self.parsing = _Answer.error(503, "draining", "the tokenlat sidecar is shutting down")
            else:
                request = _Request(
                    parser.get_method(),
                    target,
                    path,
                    self._headers,
                    parser.get_http_version(),
                    parser.should_keep_alive(),
                    arrival,
                )
                self.parsing = _Hop(proxy, self, request)
        self.hops.append(self.parsing)
        if len(self.hops) == 1:
            self._start(self.parsing)
        else:
            self.pause_reading()  # a pipelined request: read no further until the ones before it are answered

    def on_body(self, body: bytes) -> None:
        if isinstance(self.parsing, _Hop):
            self.parsing.body(body)

    def on_message_complete(self) -> None:
        parsing, self.parsing = self.parsing, None
        if isinstance(parsing, _Hop):
            parsing.body_end()
        elif parsing is not None and parsing is self.active:
            self._answer(parsing)

    # -- one request after the other

    def _start(self, item: _Hop | _Answer) -> None:
        if isinstance(item, _Hop):
            item.start()
        elif item is not self.parsing:  # our own answer, its request read to the end
            self._answer(item)

    def _answer(self, answer: _Answer) -> None:
        self.write(answer.response)
        self.hops.popleft()
        if answer.close:
            self.close()
            return
        self._next()

    def hop_done(self, hop: _Hop) -> None:
        if self.hops and self.hops[0] is hop:
            self.hops.popleft()
        if hop.close_client or self.proxy.draining:
            self.close()
            return
        self.resume_reading()  # a pause for this request's body (its upstream was slow) ends with it
        self._next()

    def _next(self) -> None:
        if self.hops:
            self._start(self.hops[0])
        else:
            self.resume_reading()


class _Upstream(_HeadReader, asyncio.Protocol):
    """One connection to the upstream, serving one request at a time and kept alive between them."""

    def __init__(self, proxy: _Proxy) -> None:
        super().__init__()
        self.proxy = proxy
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport
        self.hop: _Hop | None = None
        self.arrived = 0.0
        self._final = True  # the message being parsed is a final response, not an interim 1xx one
        self._until_close = False  # its body ends when the connection does

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self in self.proxy.idle:
            self.proxy.idle.remove(self)
        hop, self.hop = self.hop, None
        if hop is None:
            return
        if exc is None and self._until_close and hop.response_started:
            hop.response_end(reusable=False)  # a body delimited by the end of the connection: complete
        else:
            hop.upstream_broke(str(exc) if exc else "connection closed")

    # Flow control, request side: an upstream that reads slowly slows the reading of the client's body.
    def pause_writing(self) -> None:
        if self.hop is not None:
            self.hop.client.pause_reading()

    def resume_writing(self) -> None:
        if self.hop is not None:
            self.hop.client.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.hop is None:  # nothing asked: a server talking out of turn
            self.transport.close()
            return
        self.arrived = self.proxy.metrics.clock()  # when this read returned: the time of the chunks in it
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            hop, self.hop = self.hop, None
            self.transport.close()
            if hop is not None:
                hop.upstream_broke(f"malformed HTTP response: {exc}")

    # -- httptools callbacks (and _HeadReader's)

    def on_headers_complete(self) -> None:
        hop = self.hop
        if hop is None:
            return
        headers = self._headers
        self._until_close = (
            http1.header(headers, b"content-length") is None and http1.header(headers, b"transfer-encoding") is None
        )
        self._final = hop.response_head(self.parser.get_status_code(), bytes(self._start_line), headers)
        if self._final and hop.request.method == b"HEAD":
            # The parser cannot know that a response to HEAD has no body (it would wait for Content-Length bytes):
            # the response is complete, and this connection is not used again.
            self.hop = None
            self.transport.close()
            hop.response_end(reusable=False)

    def on_body(self, body: bytes) -> None:
        if self.hop is not None:
            self.hop.response_body(body, self.arrived)

    def on_message_complete(self) -> None:
        if self.hop is None or not self._final:
            return  # an interim response: the final one follows on the same connection
        self.hop.response_end(reusable=self.parser.should_keep_alive())


def _no_delay(transport: asyncio.Transport) -> None:
    """Send small writes at once. asyncio does so only for sockets it made itself: a socket bound by
    ``socket.create_server`` (proto 0) keeps Nagle's algorithm, which held a token behind the response head until
    the client's delayed ACK, 30-40 ms later."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _decoded_path(target: bytes) -> str:
    try:
        path = httptools.parse_url(target).path or b"/"
    except httptools.HttpParserInvalidURLError:
        path = target.split(b"?", 1)[0]
    return URL.build(path=path.decode("latin-1"), encoded=True).path


# --------------------------------------------------------------------------- app and server


def create_sidecar_app(
    upstream: str,
    metrics: TokenMetrics,
    *,
    fmt: str | None = None,
    user_id_header: str | None = "x-user-id",
    request_id_header: str = "x-request-id",
    provider: str | None = None,
    max_json_body: int = 1 << 20,
    max_line_bytes: int = 1 << 20,
    detect_bytes: int = DETECT_BYTES,
    measure: bool = True,
) -> _Proxy:
    """The proxy, ready to serve with ``serve_sidecar``. ``fmt`` fixes the stream format (None or "auto": detect
    it).

    ``max_json_body``: request bodies up to this size are kept to read their JSON ``model`` (every body streams to
    the upstream as it arrives); larger ones leave their requests without gen_ai.request.model.
    ``max_line_bytes``: a longer stream line is not parsed (it is still relayed) and is counted.
    ``detect_bytes``: how many of a response's first bytes format detection may wait for (and hold) before it
    judges the response on them; the bytes themselves are relayed at once.
    ``measure=False`` relays and counts, and records nothing: the benchmark's control run.
    """
    fmt = None if fmt in (None, "auto") else fmt
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: must be auto or one of {', '.join(FORMATS)}")
    if detect_bytes < 1:
        raise ValueError(f"detect_bytes must be at least 1, got {detect_bytes}")
    settings = _Settings(
        upstream=validate_upstream(upstream),
        fmt=fmt,
        user_id_header=user_id_header.lower().encode() if user_id_header else None,
        request_id_header=request_id_header.lower().encode(),
        provider=provider or None,
        max_json_body=max_json_body,
        max_line_bytes=max_line_bytes,
        detect_bytes=detect_bytes,
        measure=measure,
    )
    return _Proxy(settings, metrics)


def sidecar_stats(app: _Proxy) -> SidecarStats:
    """The app's live counters (the same object ``GET /-/tokenlat/stats`` serves)."""
    return app.stats


def begin_drain(app: _Proxy) -> None:
    """Start draining: health answers 503 and new requests get 503, while in-flight ones go on.

    ``runner.cleanup()`` does this too; calling it first lets a load balancer notice before the port closes.
    """
    app.draining = True


@dataclass
class SidecarRunner:
    """A serving sidecar; ``await cleanup()`` shuts it down gracefully."""

    proxy: _Proxy
    server: asyncio.Server
    drain_timeout: float
    _closed: bool = field(default=False, repr=False)

    async def cleanup(self) -> None:
        """Stop accepting, let in-flight requests finish for up to ``drain_timeout`` seconds, cancel the rest
        (recorded as "cancelled"), close every connection."""
        if self._closed:
            return
        self._closed = True
        proxy = self.proxy
        proxy.draining = True
        self.server.close()
        for client in list(proxy.clients):
            if not client.hops:  # idle keep-alive connections: nothing to wait for
                client.close()
        try:
            await asyncio.wait_for(proxy.idle_event.wait(), self.drain_timeout)
        except asyncio.TimeoutError:
            log.warning("tokenlat sidecar: %d request(s) in flight at the drain timeout", proxy.stats.in_flight)
        for client in list(proxy.clients):
            if client.transport is not None:
                client.transport.abort()  # connection_lost records what was cut short as cancelled
        for upstream in proxy.idle:
            upstream.transport.close()
        proxy.idle.clear()
        proxy.measure_now()
        await self.server.wait_closed()


def _bind(host: str, port: int) -> socket.socket:
    # One socket, so port 0 yields one well-defined port (a name may resolve to several addresses).
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return socket.create_server(address, family=family)


async def serve_sidecar(app: _Proxy, host: str, port: int, *, drain_timeout: float = 30.0) -> tuple[SidecarRunner, int]:
    """Serve ``app`` in the running loop; returns the runner and the bound port.

    ``await runner.cleanup()`` shuts down gracefully: it stops accepting connections, lets in-flight requests
    finish for up to ``drain_timeout`` seconds, cancels what is left (recorded as "cancelled"), then closes the
    upstream connections.
    """
    sock = _bind(host, port)
    try:
        server = await asyncio.get_running_loop().create_server(lambda: _Client(app), sock=sock)
    except BaseException:
        sock.close()
        raise
    return SidecarRunner(app, server, drain_timeout), sock.getsockname()[1]
