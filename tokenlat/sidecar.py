"""A zero-intrusion streaming reverse proxy that measures token latency from outside the model server.

    app = create_sidecar_app("http://127.0.0.1:8000", telemetry.metrics)
    runner, port = await serve_sidecar(app, "127.0.0.1", 9000)
    ...
    begin_drain(app)          # health turns 503, new requests get 503
    await runner.cleanup()    # stops listening, lets in-flight streams finish (drain timeout), then closes

Clients talk to the sidecar instead of the server and get exactly the bytes the server sent: any method, path,
query and body; status and headers minus the hop-by-hop ones; bodies relayed chunk by chunk, never decompressed
or recompressed. When a response is a token stream (``tokenlat.parsers.detect_format`` on the path, the content
type and the first chunk, or a fixed ``fmt``), the sidecar parses a copy of each chunk and records the request's
TTFT, per-token gaps, duration and usage with a ``RequestRecorder`` whose start is the request's arrival. A chunk
is measured after it has been relayed (and after the other chunks ready at that moment), with the time it
arrived: measuring costs CPU, but a chunk never waits for its own parse, nor for those of chunks that arrived
with it.

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
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

import aiohttp
from aiohttp import web
from multidict import CIMultiDict, MultiMapping
from opentelemetry.util.types import AttributeValue
from yarl import URL

from tokenlat import semconv
from tokenlat.parsers import FORMATS, StreamEvent, StreamParser, detect_format, make_parser, request_model
from tokenlat.recorder import CANCELLED, RequestRecorder, TokenMetrics

__all__ = [
    "CONTROL_PREFIX",
    "HEALTH_PATH",
    "STATS_PATH",
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

# Connecting must not hang a client forever on a blackholed upstream; reading must never time out, because a
# long prompt can legitimately take minutes to its first token.
CONNECT_TIMEOUT_S = 10.0

# RFC 9110 section 7.6.1: hop-by-hop headers describe one connection and must not be forwarded. "Proxy-*" is
# matched by prefix; headers named in Connection are removed as well (see _end_to_end).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "te", "trailer", "transfer-encoding", "upgrade"})
# Request headers the proxy itself answers for: Host names the upstream (aiohttp sets it from the URL), and the
# sidecar's server side has already dealt with Expect: 100-continue.
_REQUEST_ONLY = frozenset({"host", "expect"})
# aiohttp's client adds these when absent; a transparent proxy must not (Accept-Encoding would make the upstream
# compress a body the client never asked to be compressed).
_NO_AUTO_HEADERS = ("Accept", "Accept-Encoding", "User-Agent", "Content-Type")

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
    the upstream answered. The remaining counters overlap those: ``upstream_errors`` (4xx/5xx responses and error
    events inside streams), ``upstream_resets``, ``client_disconnects`` (including streams cut by the drain
    timeout), the parsers' malformed events and oversized lines, and ``in_flight`` (requests being proxied now).
    """

    requests: int = 0
    streams: int = 0
    passthrough: int = 0
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
    user_id_header: str | None
    request_id_header: str
    provider: str | None
    max_json_body: int
    max_line_bytes: int


class _UpstreamBroke(Exception):
    """Reading the upstream response failed: the connection was reset or the body was cut short."""


class _ClientGone(Exception):
    """Writing to the client failed: it disconnected."""


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
    return str(url).rstrip("/")


def _end_to_end(headers: MultiMapping[str], drop: frozenset[str] = frozenset()) -> CIMultiDict[str]:
    """``headers`` minus hop-by-hop headers (and ``drop``), repeated headers (Set-Cookie) kept."""
    named = {token.strip().lower() for value in headers.getall("Connection", []) for token in value.split(",")}
    kept: CIMultiDict[str] = CIMultiDict()
    for name, value in headers.items():
        lower = name.lower()
        if lower in _HOP_BY_HOP or lower.startswith("proxy-") or lower in named or lower in drop:
            continue
        kept.add(name, value)
    return kept


def _json_error(status: int, kind: str, message: str) -> web.Response:
    # OpenAI's error shape, which every OpenAI-compatible client knows how to show.
    return web.json_response({"error": {"message": message, "type": kind, "code": status}}, status=status)


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


def _json_or_none(body: bytes | None) -> Any:
    if not body:
        return None
    try:
        return json.loads(body)
    except ValueError:  # includes UnicodeDecodeError
        return None


async def _read_prefix(request: web.Request, limit: int) -> tuple[bytes, bool]:
    """Up to ``limit`` bytes of the body, and whether that is all of it.

    Larger bodies are not read to the end here: the caller streams the prefix and the rest to the upstream, so a
    huge upload never sits in memory.
    """
    length = request.content_length
    if length is not None and length > limit:
        return b"", False
    buffered = bytearray()
    while len(buffered) <= limit:
        chunk = await request.content.readany()
        if not chunk:
            return bytes(buffered), True
        buffered += chunk
    return bytes(buffered), False


async def _chain(prefix: bytes, content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    if prefix:
        yield prefix
    async for chunk in content.iter_any():
        yield chunk


async def _read(upstream: aiohttp.ClientResponse) -> bytes:
    """The next piece of the upstream body as it arrived (b"" at its end)."""
    try:
        return await upstream.content.readany()
    except (aiohttp.ClientError, OSError) as exc:
        raise _UpstreamBroke(str(exc)) from exc


async def _write(resp: web.StreamResponse, chunk: bytes) -> None:
    # Backpressure: write() waits while the transport's buffer is above its high-water mark, so a slow client
    # slows our reads from the upstream (and TCP flow control slows the upstream) instead of growing a buffer.
    try:
        await resp.write(chunk)
    except ConnectionError as exc:
        raise _ClientGone(str(exc)) from exc


def _break_client_connection(request: web.Request) -> None:
    """Close the client connection after what was written so far, without ending the response properly.

    The client then sees a chunked body without its last chunk (or fewer bytes than Content-Length): a broken
    stream, exactly like the upstream's, rather than a complete-looking one. ``close`` (not ``abort``) flushes the
    bytes already written, which the upstream did send.
    """
    transport = request.transport
    if transport is not None:
        transport.close()


# --------------------------------------------------------------------------- one exchange


class _Exchange:
    """One proxied request: what is known about it, and its measurement if it turns out to be a token stream.

    The recorder is created lazily, at the first event that carries anything (a token, the model, usage), with
    ``start`` = the request's arrival: the timings are the same as creating it at arrival, and
    gen_ai.response.model (metric attributes are fixed when the recorder is created) can still come from the
    stream. Responses that are not token streams never create one.
    """

    def __init__(self, proxy: _Proxy, request: web.Request, arrival: float, body: bytes | None) -> None:
        self.proxy = proxy
        self.path = request.path
        self.arrival = arrival
        self.body = body  # None when too large to have been buffered
        self.user_id = request.headers.get(proxy.settings.user_id_header) if proxy.settings.user_id_header else None
        self.request_id = request.headers.get(proxy.settings.request_id_header)
        self.content_type: str | None = None  # of the response, once it has arrived
        self.classified = False  # counted as a stream or a pass-through
        self.error_status: str | None = None
        self.stream_error: str | None = None
        self.parser: StreamParser | None = None
        self.recorder: RequestRecorder | None = None
        self.response_model: str | None = None
        self._parsed_body: Any = None
        self._body_parsed = False

    # -- what the request is

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
        fmt = self.parser.format if self.parser is not None else None
        return self.proxy.metrics.request(
            self.attributes(fmt), user_id=self.user_id, request_id=self.request_id, start=self.arrival
        )

    # -- measuring a stream

    def start_stream(self, fmt: str) -> None:
        self.parser = make_parser(fmt, max_line_bytes=self.proxy.settings.max_line_bytes)

    def feed(self, chunk: bytes, arrived: float) -> None:
        """Measure a chunk that arrived at ``arrived`` (by the metrics' clock)."""
        if self.parser is None:
            return
        try:
            events = self.parser.feed(chunk)
        except Exception:  # the parsers never raise by contract; if one does, measuring stops, relaying does not
            self._parser_failed()
            return
        self._observe(events, arrived)

    def _observe(self, events: list[StreamEvent], arrived: float | None = None) -> None:
        for event in events:
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
        self.parser = None
        self.stream_error = PARSER_FAILURE

    # -- the end

    def finish(self, error: str | None) -> None:
        """Record the request, if it is one to record. ``error``: how the relay ended (None: completely)."""
        self.proxy.measure_now()
        if self.error_status is not None:
            self._record_failure(self.error_status)
        elif self.parser is not None or self.stream_error == PARSER_FAILURE:
            self._finish_stream(error)
        elif error is not None and self.would_be_stream():
            # Ended before the first chunk told what the response is (or before any response): a stream the
            # client asked for.
            self._record_failure(error)

    def _finish_stream(self, error: str | None) -> None:
        parser = self.parser
        if parser is not None:
            try:
                self._observe(parser.close())
            except Exception:
                self._parser_failed()
            stats = self.proxy.stats
            stats.malformed_events += parser.stats.malformed
            stats.oversized_lines += parser.stats.oversized
        if self.recorder is None:
            self.recorder = self._new_recorder()
        self.recorder.finish(error or self.stream_error)

    def _record_failure(self, error: str) -> None:
        self._new_recorder().finish(error)


# --------------------------------------------------------------------------- the proxy


class _Proxy:
    """The request handlers, sharing settings, telemetry, counters and the upstream client session."""

    def __init__(self, settings: _Settings, metrics: TokenMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.stats = SidecarStats()
        self.draining = False
        self._session: aiohttp.ClientSession | None = None
        # Chunks relayed but not yet measured, in arrival order, and whether a callback will measure them.
        self._unmeasured: list[tuple[_Exchange, bytes, float]] = []
        self._measure_scheduled = False

    def measure_later(self, exchange: _Exchange, chunk: bytes, arrived: float) -> None:
        """Measure ``chunk`` once the chunks ready now have been relayed.

        Chunks of many streams often arrive together. Relaying them all before parsing any means no client waits
        for another stream's parse; the timings are unaffected, as each chunk carries its arrival time.
        """
        if exchange.parser is None:
            return
        self._unmeasured.append((exchange, chunk, arrived))
        if not self._measure_scheduled:
            self._measure_scheduled = True
            asyncio.get_running_loop().call_soon(self.measure_now)

    def measure_now(self) -> None:
        """Measure every chunk waiting (also called before a stream is finished, so that none is left out)."""
        self._measure_scheduled = False
        unmeasured, self._unmeasured = self._unmeasured, []
        for exchange, chunk, arrived in unmeasured:
            exchange.feed(chunk, arrived)

    async def session_context(self, app: web.Application) -> AsyncIterator[None]:
        """cleanup_ctx: one client session (and its connection pool) for the app's lifetime."""
        self._session = aiohttp.ClientSession(
            auto_decompress=False,  # relay the bytes exactly as sent, compressed or not
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            # No pool limit: the sidecar's concurrency is its clients', and a limit would queue their requests
            # inside the proxy, adding to the TTFT it measures.
            connector=aiohttp.TCPConnector(limit=0),
            # Never keep one client's cookies and send them with another client's requests.
            cookie_jar=aiohttp.DummyCookieJar(),
            skip_auto_headers=_NO_AUTO_HEADERS,
        )
        try:
            yield
        finally:
            await self._session.close()
            self._session = None

    async def on_shutdown(self, app: web.Application) -> None:
        self.draining = True

    # -- the sidecar's own endpoints

    async def health(self, request: web.Request) -> web.Response:
        if self.draining:
            return web.json_response({"status": "draining"}, status=503)
        return web.json_response({"status": "serving"})

    async def stats_endpoint(self, request: web.Request) -> web.Response:
        return web.json_response({**asdict(self.stats), "draining": self.draining})

    async def reserved(self, request: web.Request) -> web.Response:
        return _json_error(404, "not_found", f"{request.path} is reserved for the tokenlat sidecar")

    # -- proxying

    async def proxy(self, request: web.Request) -> web.StreamResponse:
        stats = self.stats
        stats.requests += 1
        if self.draining:
            stats.rejected += 1
            return _json_error(503, "draining", "the tokenlat sidecar is shutting down")
        stats.in_flight += 1
        try:
            return await self._proxy(request, self.metrics.clock())
        finally:
            stats.in_flight -= 1

    async def _proxy(self, request: web.Request, arrival: float) -> web.StreamResponse:
        try:
            body, complete = await self._read_body(request)
        except asyncio.CancelledError:  # the client went away while uploading
            self.stats.client_disconnects += 1
            raise
        exchange = _Exchange(self, request, arrival, body if complete else None)
        data: bytes | AsyncIterator[bytes] | None = None
        if request.body_exists:
            data = body if complete else _chain(body, request.content)
        try:
            upstream = await self._send(request, data)
        except (aiohttp.ClientConnectorError, aiohttp.ServerTimeoutError) as exc:  # only connecting has a timeout
            self.stats.upstream_unavailable += 1
            exchange.finish(UPSTREAM_UNAVAILABLE)
            return _json_error(502, UPSTREAM_UNAVAILABLE, f"upstream unavailable: {exc}")
        except aiohttp.ClientError as exc:
            self.stats.upstream_resets += 1
            exchange.finish(UPSTREAM_RESET)
            return _json_error(502, UPSTREAM_RESET, f"upstream closed the connection or answered garbage: {exc}")
        except asyncio.CancelledError:
            self.stats.client_disconnects += 1
            exchange.finish(CANCELLED)
            raise
        try:
            return await self._relay(request, upstream, exchange)
        finally:
            upstream.release()

    async def _read_body(self, request: web.Request) -> tuple[bytes, bool]:
        """A small body in full (for its model and stream flag), else at most its first ``max_json_body`` bytes.

        Any content type: JSON often arrives without one, or as curl's form-urlencoded default; the size limit is
        what protects memory, and a non-JSON body simply has no model.
        """
        if not request.body_exists:
            return b"", True
        return await _read_prefix(request, self.settings.max_json_body)

    async def _send(self, request: web.Request, data: bytes | AsyncIterator[bytes] | None) -> aiohttp.ClientResponse:
        assert self._session is not None, "the app is not running"
        url = URL(self.settings.upstream + request.raw_path, encoded=True)  # raw: no re-encoding of path or query
        return await self._session.request(
            request.method,
            url,
            headers=_end_to_end(request.headers, _REQUEST_ONLY),
            data=data,
            allow_redirects=False,  # redirects are the client's business
        )

    async def _relay(
        self, request: web.Request, upstream: aiohttp.ClientResponse, exchange: _Exchange
    ) -> web.StreamResponse:
        """Relay status, headers and body; measure the body if it is a token stream; record how it ended."""
        exchange.content_type = upstream.headers.get("Content-Type", "")
        if upstream.status >= 400:
            self.stats.upstream_errors += 1
            if exchange.would_be_stream():
                exchange.error_status = str(upstream.status)
        resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=_end_to_end(upstream.headers))
        error: str | None = CANCELLED  # what a CancelledError (client gone, or drain timeout) leaves behind
        try:
            await self._pump(request, resp, upstream, exchange)
            error = None
        except _ClientGone:
            self.stats.client_disconnects += 1
            upstream.close()  # stop reading: the upstream sees the disconnect and can stop generating
        except _UpstreamBroke:
            self.stats.upstream_resets += 1
            error = UPSTREAM_RESET
            _break_client_connection(request)
        except asyncio.CancelledError:
            self.stats.client_disconnects += 1
            upstream.close()
            raise
        finally:
            if not exchange.classified:  # ended before its first chunk
                self._count(exchange, exchange.error_status is None and exchange.would_be_stream())
            exchange.finish(error)
        return resp

    async def _pump(
        self, request: web.Request, resp: web.StreamResponse, upstream: aiohttp.ClientResponse, exchange: _Exchange
    ) -> None:
        try:
            await resp.prepare(request)  # headers go out at once, before the first token
        except ConnectionError as exc:
            raise _ClientGone(str(exc)) from exc
        clock = self.metrics.clock
        chunk = await _read(upstream)
        arrived = clock()  # a token's time is when it arrived, not when a slow client took it
        self._classify(exchange, upstream.status, chunk)
        while chunk:
            # Relay first, measure after: no client waits for a parse (see measure_later).
            await _write(resp, chunk)
            self.measure_later(exchange, chunk, arrived)
            chunk = await _read(upstream)
            arrived = clock()
        try:
            await resp.write_eof()
        except ConnectionError as exc:
            raise _ClientGone(str(exc)) from exc

    def _classify(self, exchange: _Exchange, status: int, head: bytes) -> None:
        """Decide from the first chunk whether the response is a token stream to measure."""
        fmt: str | None = None
        if 200 <= status < 300:
            detected = detect_format(exchange.path, exchange.content_type, head)
            if detected is not None:
                fmt = self.settings.fmt or detected
            elif self.settings.fmt is not None and _wants_stream(exchange.path, exchange.parsed_body()):
                fmt = self.settings.fmt  # a fixed format measures what auto-detection does not recognise
        self._count(exchange, fmt is not None)
        if fmt is not None:
            exchange.start_stream(fmt)

    def _count(self, exchange: _Exchange, stream: bool) -> None:
        exchange.classified = True
        if stream:
            self.stats.streams += 1
        else:
            self.stats.passthrough += 1


# --------------------------------------------------------------------------- app and server

_PROXY = web.AppKey("tokenlat_sidecar", _Proxy)


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
) -> web.Application:
    """The proxy as an aiohttp application. ``fmt`` fixes the stream format (None or "auto": detect it).

    ``max_json_body``: request bodies up to this size are buffered to read their JSON ``model``; larger ones are
    streamed to the upstream as they arrive, and their requests go without gen_ai.request.model.
    ``max_line_bytes``: a longer stream line is not parsed (it is still relayed) and is counted.
    """
    fmt = None if fmt in (None, "auto") else fmt
    if fmt is not None and fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: must be auto or one of {', '.join(FORMATS)}")
    settings = _Settings(
        upstream=validate_upstream(upstream),
        fmt=fmt,
        user_id_header=user_id_header or None,
        request_id_header=request_id_header,
        provider=provider or None,
        max_json_body=max_json_body,
        max_line_bytes=max_line_bytes,
    )
    proxy = _Proxy(settings, metrics)
    app = web.Application()
    app[_PROXY] = proxy
    app.cleanup_ctx.append(proxy.session_context)
    app.on_shutdown.append(proxy.on_shutdown)
    app.router.add_get(HEALTH_PATH, proxy.health, allow_head=False)
    app.router.add_get(STATS_PATH, proxy.stats_endpoint, allow_head=False)
    app.router.add_route("*", CONTROL_PREFIX + "{tail:.*}", proxy.reserved)
    app.router.add_route("*", "/{tail:.*}", proxy.proxy)
    return app


def sidecar_stats(app: web.Application) -> SidecarStats:
    """The app's live counters (the same object ``GET /-/tokenlat/stats`` serves)."""
    return app[_PROXY].stats


def begin_drain(app: web.Application) -> None:
    """Start draining: health answers 503 and new requests get 503, while in-flight ones go on.

    ``runner.cleanup()`` does this too; calling it first lets a load balancer notice before the port closes.
    """
    app[_PROXY].draining = True


def _bind(host: str, port: int) -> socket.socket:
    # One socket, so port 0 yields one well-defined port (TCPSite binds every address a name resolves to).
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return socket.create_server(address, family=family)


async def serve_sidecar(
    app: web.Application, host: str, port: int, *, drain_timeout: float = 30.0
) -> tuple[web.AppRunner, int]:
    """Serve ``app`` in the running loop; returns the runner and the bound port.

    ``await runner.cleanup()`` shuts down gracefully: it stops accepting connections, lets in-flight requests
    finish for up to ``drain_timeout`` seconds, cancels what is left (recorded as "cancelled"), then closes the
    upstream session.
    """
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=drain_timeout,
        # A client disconnect cancels its handler at once, even while it waits for the next upstream chunk, so
        # the upstream connection is closed right away instead of at the next write.
        handler_cancellation=True,
    )
    await runner.setup()
    try:
        sock = _bind(host, port)
    except BaseException:
        await runner.cleanup()
        raise
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, sock.getsockname()[1]
