"""Fuzzing the sidecar's HTTP layer: arbitrary request bytes sent to a running ``Sidecar`` in front of the synthetic
model server.

Each case is one client connection sending valid request heads mutated, noise, huge heads, broken chunked bodies,
or several requests pipelined, cut into pieces anywhere; then it either half-closes (the client is done) or waits.
What must hold: whatever the sidecar sends back is HTTP (``HTTP/1.1 ...``), and it closes the connection within
bounded time (its head and idle timeouts are 0.2 s here; the read deadline, POLL_DEADLINE_S, is a liveness
bound, not a timing). After all the cases the sidecar still streams a normal request, and its count of open client
connections and of requests in flight returns to zero.

The sidecar serves from an event loop in a thread of its own, so that each case can use a plain blocking socket
and the cases run as hypothesis runs them, one after the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any, TypeVar

from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import chunked, fuzz_settings, mutated
from tests.unit.test_sidecar import CHAT, POLL_DEADLINE_S, Otel, Served, chat_body, otel, start_sidecar
from tokenlat.sidecar import HEALTH_PATH, STATS_PATH
from tokenlat.sidecar.settings import MAX_HEAD_BYTES
from tokenlat_cli.verify import synthetic
from tokenlat_cli.verify.synthetic import Distribution, SyntheticConfig

__all__ = ["otel"]  # the fixture, used by name

T = TypeVar("T")
TIMEOUT_S = 0.2
# How long a case waits for the sidecar to close a connection its client left open, before the client is done.
PATIENCE_S = 0.25
# The shortest stream the synthetic server sends, its tokens a millisecond apart: the cases stay fast.
QUICK = SyntheticConfig(
    seed=5, ttft=Distribution.parse("fixed:0.001"), inter_token=Distribution.parse("fixed:0.001"), output_tokens=(2, 4)
)


class LoopThread:
    """An event loop running in a thread: the sidecar and its upstream live there, the test talks to them over
    sockets from the main thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="fuzz-sidecar-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(POLL_DEADLINE_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(POLL_DEADLINE_S)
        self.loop.close()


@contextlib.contextmanager
def serving(otel: Otel, **options: Any) -> Iterator[Served]:
    """A sidecar in front of the synthetic server, both in a LoopThread, shut down (drained, closed) at the end."""
    loop = LoopThread()
    try:
        runner, port = loop.run(synthetic.serve(QUICK))
        try:
            served = loop.run(start_sidecar(f"http://127.0.0.1:{port}", otel, drain_timeout=2.0, **options))
            try:
                yield served
            finally:
                loop.run(served.shutdown())
        finally:
            loop.run(runner.cleanup())
    finally:
        loop.close()


def exchange(url: str, pieces: list[bytes], half_close: bool, patience: float | None = None) -> bytes:
    """Send ``pieces`` on one connection, half-close it or not, and read until the sidecar closes it.

    A connection left open is half-closed after ``patience`` seconds without the sidecar closing it: a request whose
    body is still to come may wait for it as long as the client likes (docs/limits.md, "not bounded yet"), but once
    the client is done the sidecar must close within POLL_DEADLINE_S. ``patience`` None: the sidecar must close
    within POLL_DEADLINE_S on its own.
    """
    host, port = url.removeprefix("http://").split(":")
    received = bytearray()
    with socket.create_connection((host, int(port)), timeout=POLL_DEADLINE_S) as sock:
        try:
            for piece in pieces:
                sock.sendall(piece)
            if half_close:
                sock.shutdown(socket.SHUT_WR)
        except TimeoutError:
            raise AssertionError(f"the sidecar took nothing for {POLL_DEADLINE_S} s, and did not close") from None
        except OSError:
            half_close = True  # the sidecar refused and closed before taking it all: its answer is still to be read
        sock.settimeout(POLL_DEADLINE_S if half_close or patience is None else patience)
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break  # closed with our bytes unread: a close all the same
            except TimeoutError:
                assert not half_close and patience is not None, f"the connection was not closed in {POLL_DEADLINE_S} s"
                try:
                    sock.shutdown(socket.SHUT_WR)
                except OSError:  # not connected any more: closed meanwhile
                    break
                sock.settimeout(POLL_DEADLINE_S)
                half_close = True
                continue
            if not chunk:
                break
            received += chunk
    return bytes(received)


def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` (a read of the sidecar's counters) until it holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.005)


# -- requests ---------------------------------------------------------------------------------------------------

_BODY = json.dumps(chat_body()).encode()
_CHUNKED_BODY = b"%x\r\n%s\r\n0\r\n\r\n" % (len(_BODY), _BODY)
VALID = [
    b"GET " + HEALTH_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET " + STATS_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n",
    b"HEAD / HTTP/1.0\r\n\r\n",
    b"POST "
    + CHAT.encode()
    + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_BODY)
    + _BODY,
    b"POST "
    + CHAT.encode()
    + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n"
    + _CHUNKED_BODY,
    b"POST " + STATS_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n" + _CHUNKED_BODY,
    b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
]
_BAD_CHUNKS = [
    b"zz\r\n",
    b"-1\r\n",
    b"ffffffffffffffffff\r\n",
    b"5\r\nab\r\n",
    b"3\r\nabcX\r\n",
    b"0\r\nX",
    b"\r\n\r\n",
]
REQUESTS = st.one_of(
    st.sampled_from(VALID),
    st.sampled_from(VALID).flatmap(mutated),
    st.binary(min_size=1, max_size=300),
    # A head too big to hold: one huge field, or very many.
    st.integers(MAX_HEAD_BYTES // 2, 2 * MAX_HEAD_BYTES).map(lambda n: b"GET / HTTP/1.1\r\nX-Big: " + b"a" * n),
    st.integers(1000, 4000).map(lambda n: b"GET / HTTP/1.1\r\n" + b"X-Many: a\r\n" * n + b"\r\n"),
    # A chunked body that breaks its framing, to the upstream, to the sidecar's own endpoint, or on a 100-continue.
    st.tuples(st.sampled_from([VALID[5], VALID[6]]), st.integers(0, 40), st.sampled_from(_BAD_CHUNKS)).map(
        lambda t: t[0][: t[0].index(b"\r\n\r\n") + 4 + t[1]] + t[2]
    ),
)
# One request, or several pipelined on the connection.
PIPELINES = st.lists(REQUESTS, min_size=1, max_size=4).map(b"".join)


def test_any_request_bytes_are_answered_or_closed_and_the_sidecar_serves_on(otel: Otel) -> None:
    with serving(otel, idle_timeout=TIMEOUT_S, head_timeout=TIMEOUT_S) as served:

        @fuzz_settings(0.4)
        @given(data=st.data(), request=PIPELINES, half_close=st.booleans())
        def one(data: st.DataObject, request: bytes, half_close: bool) -> None:
            answer = exchange(served.url, data.draw(chunked(request), label="pieces"), half_close, PATIENCE_S)
            assert answer == b"" or answer.startswith(b"HTTP/1.1 "), answer[:200]

        one()
        # A normal streaming request, whole.
        request = VALID[4].replace(b"Host: x\r\n", b"Host: x\r\nConnection: close\r\n")
        answer = exchange(served.url, [request], half_close=False)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n") and answer.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n"), answer
        until(lambda: served.stats.connections == 0, "every client connection is closed")
        until(lambda: served.stats.in_flight == 0, "no request is in flight")


def test_a_huge_request_head_is_refused_not_held(otel: Otel) -> None:
    # With a minute's head timeout, only the bound on the head's size can answer within the read deadline.
    with serving(otel, head_timeout=60.0) as served:
        for head in (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * (8 * MAX_HEAD_BYTES), b"GET /" + b"a" * 2 * MAX_HEAD_BYTES):
            answer = exchange(served.url, [head[i : i + 4096] for i in range(0, len(head), 4096)], half_close=False)
            assert answer.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n"), answer[:200]
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "request_header_fields_too_large"
        # A head just within the bound is served, and the connection closed as the request asked (it used to stay
        # open until the idle timeout: the sidecar's own endpoints ignored Connection: close).
        head = b"GET " + HEALTH_PATH.encode() + b" HTTP/1.1\r\nConnection: close\r\nX-Big: "
        head += b"a" * (MAX_HEAD_BYTES - len(head) - 8) + b"\r\n\r\n"
        assert exchange(served.url, [head], half_close=False).startswith(b"HTTP/1.1 200 OK\r\n")
        assert served.stats.requests == 0  # none of them reached the upstream
        assert served.stats.oversized_heads == 2
        until(lambda: served.stats.connections == 0, "every client connection is closed")


def test_a_broken_body_of_a_request_to_the_sidecars_own_endpoint_is_answered(otel: Otel) -> None:
    # Found by the fuzzing above: the answer of the sidecar's own endpoint waited for its request's end, which the
    # broken chunk never brought, with reading paused and no timer: the connection hung until the client left.
    with serving(otel, idle_timeout=60.0, head_timeout=60.0) as served:
        request = VALID[6][: VALID[6].index(b"\r\n\r\n") + 4] + b"zz\r\n"
        answer = exchange(served.url, [request], half_close=False)
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n"), answer[:200]
        until(lambda: served.stats.connections == 0, "the connection is closed")
