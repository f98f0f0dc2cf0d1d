"""The asyncio protocols of the sidecar's two sides: client connections, and its connections to the upstream.

Both parse HTTP/1.1 with httptools (llhttp) and hand what they parse to a ``Hop``. They are protocols, not
streams or tasks, because of what happens per chunk: a response chunk goes from the upstream connection's parser
callback to the client's transport in that same callback. On aiohttp, the same proxy spent nearly twice the CPU
a chunk and added 1-3 ms at p99 on 2 cores.

A client connection serves its requests in order: a pipelined request waits (its connection unread) until those
before it are answered. Protocol upgrades are refused (501): a relayed WebSocket could not be measured, and a
half-relayed one would hang.

Client connections are bounded in number and in time (``Settings``): beyond ``max_connections`` a new one is
answered 503 and closed; a deadline applies only while nothing is being answered on a connection, the idle timeout
between requests, or the head timeout from a request head's first byte until its last (when the head did not come
whole in one read), and a response being relayed is never under either. Request boundaries only set or clear the
deadline: one timer per connection checks it when it fires and re-arms itself for a deadline that moved, so that a
keep-alive connection arms a timer about once per idle timeout, not per request. (Two timers armed and cancelled a
request were part of what stood between a request's read and its write upstream: docs/sidecar.md, Cost.)
"""

from __future__ import annotations

import asyncio
import functools
import socket
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import httptools
from yarl import URL

from tokenlat.sidecar import http1
from tokenlat.sidecar.control import CONTROL_PREFIX
from tokenlat.sidecar.flow import FlowControl
from tokenlat.sidecar.hop import Hop, Request

if TYPE_CHECKING:
    from tokenlat.sidecar.server import Sidecar


def no_delay(transport: asyncio.Transport) -> None:
    """Send small writes at once. asyncio does so only for sockets it made itself: a socket bound by
    ``socket.create_server`` (proto 0) keeps Nagle's algorithm, which held a token behind the response head until
    the client's delayed ACK, 30-40 ms later."""
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: Decoded request paths kept, and the longest path (the target before its query) kept: clients send few distinct
#: paths, and the bounds hold the cache to 256 KiB, as paths are the clients' to choose.
DECODED_PATHS_CACHED = 256
DECODED_PATH_CACHED_BYTES = 1024


def decoded_path(target: bytes) -> str:
    """The percent-decoded path of a request target, for the sidecar's own decisions (the target is relayed as is).

    Cached by the part before the query (the path never holds a "?"; queries vary per request): building it (yarl)
    cost as much as the rest of a request head's handling, for the same few paths."""
    path = target.partition(b"?")[0]
    if len(path) > DECODED_PATH_CACHED_BYTES:
        return _decode_path(path)
    return _decode_cached_path(path)


def _decode_path(path: bytes) -> str:
    try:
        parsed = httptools.parse_url(path).path or b"/"
    except httptools.HttpParserInvalidURLError:
        parsed = path
    return URL.build(path=parsed.decode("latin-1"), encoded=True).path


_decode_cached_path = functools.lru_cache(maxsize=DECODED_PATHS_CACHED)(_decode_path)


class HeadReader:
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
class Answer:
    """A whole response of the sidecar's own (its endpoints, refusals), and whether the connection closes after."""

    response: bytes
    close: bool = False

    @classmethod
    def error(cls, status: int, kind: str, message: str) -> Answer:
        """A refusal: the connection closes after it, as what follows on it cannot be trusted or is not wanted."""
        return cls(http1.json_error(status, kind, message, close=True), close=True)


#: Seconds a refused connection (503, too many connections) is kept, half-closed, for its client to read the answer
#: and close: closing at once, with the client's request unread, would reset the connection and lose the answer.
REFUSED_LINGER_S = 1.0
#: Retry-After of that 503, in seconds.
RETRY_AFTER_S = 1
#: uvloop keeps time, and rounds timers, to the millisecond: a timer may fire that much before its deadline, and is
#: then not re-armed for the rest (which would fire at once, again and again, until the loop's time moved on).
TIMER_RESOLUTION_S = 0.001


class ClientProtocol(HeadReader, asyncio.Protocol):
    """One client connection: its requests parsed by httptools and relayed one at a time, in order."""

    def __init__(self, sidecar: Sidecar) -> None:
        super().__init__()
        self.sidecar = sidecar
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.flow: FlowControl
        self.hops: deque[Hop | Answer] = deque()  # in the order of the requests; the first is being answered
        self.parsing: Hop | Answer | None = None
        self.feeding = False  # inside data_received: what a hop writes upstream waits for the end of the read
        self.in_head = False  # a request head has begun and is not complete
        self.head_size = 0  # bytes read while that head was incomplete (it began in the first of those reads)
        self.refused = False  # over max_connections: answered 503, everything it sends is discarded
        self.head_began = 0.0  # loop time of the first byte of the head being read (in_head)
        self._deadline: float | None = None  # loop time by which the idle or head timeout applies; None: neither
        self._timer: asyncio.TimerHandle | None = None  # fires at _timer_at, checks _deadline (or the 503 linger)
        self._timer_at = 0.0

    # -- the connection

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, so no isinstance check).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.flow = FlowControl(transport)
        sidecar = self.sidecar
        if len(sidecar.connections) >= sidecar.settings.max_connections:
            self._refuse_connection(transport)
            return
        no_delay(transport)
        sidecar.connections.add(self)
        sidecar.stats.connections = len(sidecar.connections)
        self._wait()

    def _refuse_connection(self, transport: asyncio.Transport) -> None:
        """503 and Retry-After, then close: the accept is spent already, but the connection holds nothing more
        than its descriptor for at most REFUSED_LINGER_S."""
        sidecar = self.sidecar
        sidecar.stats.refused_connections += 1
        sidecar.refused.add(self)
        self.refused = True
        message = "the tokenlat sidecar has its maximum of client connections"
        retry = ((b"Retry-After", str(RETRY_AFTER_S).encode()),)
        transport.write(http1.json_error(503, "too_many_connections", message, close=True, extra=retry))
        if transport.can_write_eof():
            transport.write_eof()  # the client reads the answer, then its end, and closes: then so does this side
            self._timer = asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.abort)
        else:
            transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.refused:
            self.sidecar.refused.discard(self)
            self.transport = None
            return
        self.sidecar.connections.discard(self)
        self.sidecar.stats.connections = len(self.sidecar.connections)
        self.transport = None
        for item in self.hops:
            if isinstance(item, Hop) and item.started:  # only the first; the ones queued behind never started
                item.client_gone()
        self.hops.clear()

    @property
    def active(self) -> Hop | Answer | None:
        return self.hops[0] if self.hops else None

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # connection_lost records what was cut short as cancelled

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.flow.pause_reading()

    def resume_reading(self) -> None:
        # Never while a pipelined request waits: it would be read, and its successors, with nowhere to go.
        if self.transport is not None and len(self.hops) <= 1:
            self.flow.resume_reading()

    # Flow control, response side: a slow client slows the reading of its upstream (and TCP, the upstream).
    def pause_writing(self) -> None:
        self.flow.write_paused = True
        hop = self.active
        if isinstance(hop, Hop) and hop.upstream is not None:
            hop.upstream.flow.pause_reading()

    def resume_writing(self) -> None:
        self.flow.write_paused = False
        hop = self.active
        if isinstance(hop, Hop) and hop.upstream is not None:
            hop.upstream.flow.resume_reading()

    # -- the connection's deadline, and its one timer

    def _wait(self) -> None:
        """Nothing is being answered: the head timeout applies if a request head has begun, else the idle timeout."""
        if self.transport is None or self.hops or self.parsing is not None:
            return  # a request is being answered, or its body read: no timeout applies
        sidecar = self.sidecar
        loop = sidecar.loop or asyncio.get_running_loop()
        if self.in_head:
            deadline = self.head_began + sidecar.settings.head_timeout
        else:
            deadline = loop.time() + sidecar.settings.idle_timeout
        self._deadline = deadline
        if self._timer is None or self._timer_at > deadline:  # else it fires earlier, and re-arms for the deadline
            if self._timer is not None:
                self._timer.cancel()
            self._arm(loop, deadline)

    def _busy(self) -> None:
        self._deadline = None  # the timer, if armed, finds no deadline when it fires, and stops

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        self._timer_at = when
        self._timer = loop.call_at(when, self._check_deadline)

    def _check_deadline(self) -> None:
        self._timer = None
        deadline = self._deadline
        if deadline is None or self.transport is None:
            return
        loop = self.sidecar.loop or asyncio.get_running_loop()
        if loop.time() + TIMER_RESOLUTION_S < deadline:
            self._arm(loop, deadline)  # the deadline moved on since the timer was armed
        elif self.in_head:
            self._head_timed_out()
        else:
            self._idle_timed_out()

    def _idle_timed_out(self) -> None:
        if self.transport is None or self.hops or self.parsing is not None or self.in_head:
            return
        self.sidecar.stats.idle_timeouts += 1
        self.close()

    def _head_timed_out(self) -> None:
        if self.transport is None or self.hops or not self.in_head:
            return
        self.sidecar.stats.head_timeouts += 1
        self.pause_reading()
        message = f"the request head did not arrive within {self.sidecar.settings.head_timeout:g} s"
        self.write(http1.json_error(408, "request_timeout", message, close=True))
        self.close()

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return  # read and dropped, so that the connection closes cleanly once the client has its 503
        self.feeding = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.pause_reading()  # refused at its head (on_headers_complete); the connection closes after it
        except httptools.HttpParserError as exc:
            self._refuse(400, "bad_request", f"malformed HTTP request: {exc}")
        else:
            if self.in_head:  # a head still incomplete: held (by httptools and us) until it is whole, so bounded
                self.head_size += len(data)
                limit = self.sidecar.settings.max_head_bytes
                if self.head_size > limit:
                    self.sidecar.stats.oversized_heads += 1
                    self._refuse(
                        431, "request_header_fields_too_large", f"the request head is longer than {limit} bytes"
                    )
                else:
                    self._wait()  # the head timeout, unless an earlier request is still being answered
        finally:
            self.feeding = False
        hop = self.active
        if isinstance(hop, Hop):  # only the first request can have an upstream connection
            hop.flush()

    def _refuse(self, status: int, kind: str, message: str) -> None:
        """A request that cannot be parsed: answered once those before it are, then the connection closes."""
        self.pause_reading()  # nothing more is read from this connection
        if isinstance(self.parsing, Hop):  # broken inside a body already on its way: no answer can follow it
            self.close()
            return
        if self.parsing is not None and self.hops and self.hops[-1] is self.parsing:
            # Our own answer, waiting for its request's end, which will not come now: the error answers instead.
            self.hops.pop()
        self.hops.append(Answer.error(status, kind, message))
        self.parsing = None
        if len(self.hops) == 1:
            self._next()

    # -- httptools callbacks (and HeadReader's)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head = True
        self.head_size = 0
        self.head_began = (self.sidecar.loop or asyncio.get_running_loop()).time()
        self._busy()  # a head that is not whole at the end of this read gets the head timeout (data_received)

    def on_headers_complete(self) -> None:
        self.in_head = False
        self._busy()
        sidecar, parser = self.sidecar, self.parser
        arrival = sidecar.metrics.clock()
        target = bytes(self._start_line)
        path = decoded_path(target)
        if path.startswith(CONTROL_PREFIX):
            # Closed after the answer when the client asked (Connection: close, HTTP/1.0): health probes do.
            self.parsing = Answer(sidecar.control(parser.get_method(), path), close=not parser.should_keep_alive())
        elif parser.should_upgrade():
            message = "the tokenlat sidecar does not relay protocol upgrades (WebSocket, h2c)"
            self.parsing = Answer.error(501, "not_implemented", message)
        else:
            sidecar.stats.requests += 1
            if sidecar.draining:
                sidecar.stats.rejected += 1
                self.parsing = Answer.error(503, "draining", "the tokenlat sidecar is shutting down")
            else:
                request = Request(
                    parser.get_method(),
                    target,
                    path,
                    self._headers,
                    parser.get_http_version(),
                    parser.should_keep_alive(),
                    arrival,
                )
                self.parsing = Hop(sidecar, self, request)
        self.hops.append(self.parsing)
        if len(self.hops) == 1:
            self._start(self.parsing)
        else:
            self.pause_reading()  # a pipelined request: read no further until the ones before it are answered

    def on_body(self, body: bytes) -> None:
        if isinstance(self.parsing, Hop):
            self.parsing.body(body)

    def on_message_complete(self) -> None:
        parsing, self.parsing = self.parsing, None
        if isinstance(parsing, Hop):
            parsing.body_end()
            self._wait()  # its response may have ended before its body did
        elif parsing is not None and parsing is self.active:
            self._answer(parsing)

    # -- one request after the other

    def _start(self, item: Hop | Answer) -> None:
        if isinstance(item, Hop):
            item.start()
        elif item is not self.parsing:  # our own answer, its request read to the end
            self._answer(item)

    def _answer(self, answer: Answer) -> None:
        self.write(answer.response)
        self.hops.popleft()
        if answer.close:
            self.close()
            return
        self._next()

    def hop_done(self, hop: Hop) -> None:
        if self.hops and self.hops[0] is hop:
            self.hops.popleft()
        if hop.close_client or self.sidecar.draining:
            self.close()
            return
        self.resume_reading()  # a pause for this request's body (its upstream was slow) ends with it
        self._next()

    def _next(self) -> None:
        if self.hops:
            self._start(self.hops[0])
            return
        if self.in_head:  # a head begun while an earlier request was answered: its timeout starts now
            self.head_began = (self.sidecar.loop or asyncio.get_running_loop()).time()
        self.resume_reading()
        self._wait()


class UpstreamProtocol(HeadReader, asyncio.Protocol):
    """One connection to the upstream, serving one request at a time and kept alive between them."""

    def __init__(self, sidecar: Sidecar) -> None:
        super().__init__()
        self.sidecar = sidecar
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport
        self.flow: FlowControl
        self.hop: Hop | None = None
        self.arrived = 0.0
        self._clock = sidecar.metrics.clock  # read once per read from the upstream: the hot path
        self._final = True  # the message being parsed is a final response, not an interim 1xx one
        self._until_close = False  # its body ends when the connection does

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's do not subclass asyncio.Transport, so no isinstance check).
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.flow = FlowControl(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sidecar.pool.discard(self)
        hop, self.hop = self.hop, None
        if hop is None:
            return
        if exc is None and self._until_close and hop.response_started:
            hop.response_end(reusable=False)  # a body delimited by the end of the connection: complete
        else:
            hop.upstream_broke(str(exc) if exc else "connection closed")

    # Flow control, request side: an upstream that reads slowly slows the reading of the client's body.
    def pause_writing(self) -> None:
        self.flow.write_paused = True
        if self.hop is not None:
            self.hop.client.pause_reading()

    def resume_writing(self) -> None:
        self.flow.write_paused = False
        if self.hop is not None:
            self.hop.client.resume_reading()

    def data_received(self, data: bytes) -> None:
        if self.hop is None:  # nothing asked: a server talking out of turn
            self.transport.close()
            return
        self.arrived = self._clock()  # when this read returned: the time of the chunks in it
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            hop, self.hop = self.hop, None
            self.transport.close()
            if hop is not None:
                hop.upstream_broke(f"malformed HTTP response: {exc}")

    # -- httptools callbacks (and HeadReader's)

    def on_headers_complete(self) -> None:
        hop = self.hop
        if hop is None:
            return
        headers = self._headers
        named = http1.by_name(headers)
        self._until_close = b"content-length" not in named and b"transfer-encoding" not in named
        self._final = hop.response_head(self.parser.get_status_code(), bytes(self._start_line), headers, named)
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
