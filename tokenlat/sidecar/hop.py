"""One request relayed: the client's request onto an upstream connection, the response back, and its measure.

The response's body goes from the upstream connection's parser straight to the client's transport, in the same
callback: no task or future wakes up per chunk, which is most of what the sidecar saves over an HTTP framework.
Each hop gets its own body framing (Content-Length, chunked, or until close for an HTTP/1.0 client), chosen anew,
so that the two hops cannot disagree about where a message ends.

What the hop writes to the upstream for one read from the client goes out as one write: the request head and the
body bytes parsed from the same read (all of a small POST) leave in one TCP segment, not a head and a body in two
(``ClientProtocol.data_received`` corks the hop while it parses and calls ``flush`` after).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tokenlat.recorder import CANCELLED
from tokenlat.sidecar import http1
from tokenlat.sidecar.flow import PENDING_LIMIT
from tokenlat.sidecar.settings import Upstream
from tokenlat.sidecar.stats import UPSTREAM_RESET, UPSTREAM_UNAVAILABLE

if TYPE_CHECKING:
    from tokenlat.sidecar.protocol import ClientProtocol, UpstreamProtocol
    from tokenlat.sidecar.server import Sidecar

# Request fields not relayed: the hop-by-hop and framing ones, and those the proxy itself answers for: Host names
# the upstream, and the sidecar answers Expect: 100-continue itself (the body then comes to it, and it streams the
# body on).
_NOT_RELAYED = http1.dropping(b"host", b"expect")


@dataclass
class Request:
    """A request head as httptools parsed it."""

    method: bytes
    target: bytes  # path and query exactly as received: never re-encoded
    path: str  # decoded, for the sidecar's own decisions
    headers: list[tuple[bytes, bytes]]
    version: str
    keep_alive: bool
    arrival: float
    fields: dict[bytes, bytes] = field(init=False)  # the first value of each field, by lowercase name
    chunked: bool = field(init=False)  # the body arrives chunked

    def __post_init__(self) -> None:
        self.fields = http1.by_name(self.headers)
        self.chunked = b"transfer-encoding" in self.fields

    def upstream_head(self, upstream: Upstream) -> bytes:
        fields = [(b"Host", upstream.authority), *http1.end_to_end(self.headers, _NOT_RELAYED)]
        if self.chunked:
            fields.append((b"Transfer-Encoding", b"chunked"))
        elif (length := self.fields.get(b"content-length")) is not None:
            fields.append((b"Content-Length", length))
        return http1.request_head(self.method, upstream.prefix + self.target, fields)


class Hop:
    """One request relayed, from its head's arrival to the end of its response (or its failure)."""

    def __init__(self, sidecar: Sidecar, client: ClientProtocol, request: Request) -> None:
        self.sidecar = sidecar
        self.client = client
        self.request = request
        self.exchange = sidecar.measurer.exchange(request.path, request.fields, request.arrival)
        self.upstream: UpstreamProtocol | None = None
        self.head_sent = False
        self.pending: list[bytes] = []  # framed body bytes not yet written to the upstream
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
        expect = self.request.fields.get(b"expect")
        if expect is not None and expect.lower() == b"100-continue" and not self.body_done:
            self.client.write(http1.CONTINUE)  # the body then comes here, and goes on from here
        self.started = True
        self.sidecar.started()
        self.sidecar.pool.lease(self)

    def attach(self, upstream: UpstreamProtocol) -> None:
        self.upstream = upstream
        upstream.hop = self
        if self.client.flow.write_paused:  # the client is still taking an earlier response: read at its pace
            upstream.flow.pause_reading()
        if not self.client.feeding:  # else the client's read is still being parsed: flush() follows it
            self.flush()
        self.client.resume_reading()

    def flush(self) -> None:
        """Write the head, if not yet written, and the body bytes waiting, in one write."""
        upstream = self.upstream
        if upstream is None or self.finished or (self.head_sent and not self.pending):
            return
        data = b"".join(self.pending)
        if not self.head_sent:
            self.head_sent = True
            data = self.request.upstream_head(self.sidecar.upstream) + data
        self.pending.clear()
        self.pending_size = 0
        upstream.transport.write(data)

    def body(self, data: bytes) -> None:
        limit = self.sidecar.settings.max_json_body
        if self.exchange.body is not None:
            self.prefix += data
            if len(self.prefix) > limit:
                self.sidecar.stats.oversized_bodies += 1
                self.exchange.set_body(None)
                self.prefix = bytearray()
        self._send(http1.chunk(data) if self.request.chunked else data)

    def body_end(self) -> None:
        self.body_done = True
        if self.exchange.body is not None:
            self.exchange.set_body(bytes(self.prefix))
        if self.request.chunked:
            self._send(http1.LAST_CHUNK)

    def _send(self, data: bytes) -> None:
        if self.finished:
            return
        self.pending.append(data)
        self.pending_size += len(data)
        if self.upstream is None:
            if self.pending_size > PENDING_LIMIT:  # the upstream connection is still being opened
                self.client.pause_reading()
        elif not self.client.feeding:
            self.flush()

    # -- the response, upstream to client

    def response_head(self, status: int, reason: bytes, headers: http1.Headers, named: dict[bytes, bytes]) -> bool:
        """Relay a response head (``named``: its fields by lowercase name, ``http1.by_name``); False when it was an
        interim (1xx) one, and the real response is still to come."""
        client, request, exchange = self.client, self.request, self.exchange
        if 100 <= status < 200:
            client.write(http1.response_head(status, reason, http1.end_to_end(headers)))
            return False
        self.status = status
        exchange.content_type = http1.text(named.get(b"content-type"))
        if status >= 400:
            self.sidecar.stats.upstream_errors += 1
            if exchange.would_be_stream():
                exchange.error_status = str(status)
        fields = http1.end_to_end(headers)
        length = named.get(b"content-length")
        chunked = b"transfer-encoding" in named
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
        self.close_client = self.framing == "close" or not request.keep_alive or self.sidecar.draining
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
        if exchange.reader is None:
            if exchange.classified:
                return  # relayed, not measured: not a token stream, or measuring is off
            self.sidecar.measurer.classify(exchange, self.status)  # the first chunk: is it a token stream?
        exchange.feed(data, arrived)

    def response_end(self, reusable: bool) -> None:
        """The response is complete; ``reusable``: the upstream connection may serve another request."""
        if self.framing == "chunked":
            self.client.write(http1.LAST_CHUNK)
        upstream = self.upstream
        self._finish(None)
        if upstream is not None:
            upstream.hop = None
            if reusable and self.body_done:
                upstream.flow.resume_reading()  # paused for this client, maybe: the next one may be faster
                self.sidecar.pool.release(upstream)
            else:
                upstream.transport.close()
        self.client.hop_done(self)

    # -- failures

    def unavailable(self, message: str) -> None:
        if self.finished:
            return
        self.sidecar.stats.upstream_unavailable += 1
        self._finish(UPSTREAM_UNAVAILABLE)
        self._answer_error(UPSTREAM_UNAVAILABLE, message)

    def upstream_broke(self, message: str) -> None:
        """The upstream connection closed or sent garbage before the response was complete."""
        if self.finished:
            return
        self.sidecar.stats.upstream_resets += 1
        self._drop_upstream()
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
        self.sidecar.stats.client_disconnects += 1
        self._drop_upstream()  # stop reading: the upstream sees the disconnect and can stop generating
        self._finish(CANCELLED)

    def _drop_upstream(self) -> None:
        if self.upstream is not None:
            self.upstream.hop = None
            self.upstream.transport.close()

    def _answer_error(self, kind: str, message: str) -> None:
        """A 502 of the sidecar's own; the connection closes after it when the request's body is not all read."""
        self.close_client = not self.body_done or not self.request.keep_alive or self.sidecar.draining
        self.client.write(http1.json_error(502, kind, message, close=self.close_client))
        self.client.hop_done(self)

    def _finish(self, error: str | None) -> None:
        self.finished = True
        self.exchange.finish(error)
        self.sidecar.ended()
