"""The sidecar proxy: byte-exact relaying, measurement from outside, every failure case, drain, the CLI.

Servers run in-process on 127.0.0.1 port 0 inside ``asyncio.run`` (no pytest-asyncio): the real synthetic server
as the upstream where a well-behaved model server is wanted, tiny aiohttp handlers where a misbehaving one is.
Waiting is by polling a condition, never by sleeping a guessed time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import hashlib
import inspect
import itertools
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, TypeVar

import aiohttp
import openai
import pytest
from aiohttp import web
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.metrics.export import Metric

from tests.conftest import REPO
from tests.otel_helpers import CapturingExporter
from tests.streams import CASES, Case, completing_bytes
from tests.subprocesses import read_line, stop
from tokenlat import semconv
from tokenlat.attributes import OTHER_VALUE
from tokenlat.configure import Telemetry, configure
from tokenlat.sidecar import (
    HEALTH_PATH,
    STATS_PATH,
    UNRECOGNISED_STREAMS,
    UPSTREAM_ERROR,
    UPSTREAM_RESET,
    UPSTREAM_UNAVAILABLE,
    Sidecar,
    SidecarStats,
    http1,
    loops,
    operation_name,
    protocol,
    validate_upstream,
)
from tokenlat.sidecar.measure import Exchange
from tokenlat.sidecar.models import MAX_MODEL_CHARS, OTHER_MODELS
from tokenlat.sidecar.protocol import RETRY_AFTER_S, ClientProtocol, decoded_path
from tokenlat.sidecar.settings import MAX_CONNECTIONS, default_max_connections
from tokenlat_cli.commands.sidecar import sidecar as sidecar_command
from tokenlat_cli.main import cli
from tokenlat_cli.verify import synthetic
from tokenlat_cli.verify.synthetic import Distribution, ServerStats, SyntheticConfig, token_text

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

FAST = SyntheticConfig(
    seed=11,
    ttft=Distribution.parse("uniform:0.005,0.015"),
    inter_token=Distribution.parse("uniform:0.001,0.003"),
    output_tokens=(4, 12),
)
# 40 tokens 10 ms apart: a stream that is still running while a test acts on it.
SLOW = SyntheticConfig(
    seed=3, ttft=Distribution.parse("fixed:0.005"), inter_token=Distribution.parse("fixed:0.01"), output_tokens=(40, 40)
)
CHAT = "/v1/chat/completions"
POLL_DEADLINE_S = 10.0


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    return asyncio.run(coro_fn())


async def until(condition: Callable[[], bool], what: str) -> None:
    """Poll ``condition`` until it holds; fail naming ``what`` if it never does."""
    deadline = time.monotonic() + POLL_DEADLINE_S
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        await asyncio.sleep(0.005)


def chat_body(model: str = "m-sidecar", stream: bool = True, **extra: Any) -> dict[str, Any]:
    messages = [{"role": "user", "content": "one two three four"}]
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": stream, **extra}
    if stream:
        body.setdefault("stream_options", {"include_usage": True})
    return body


def sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def openai_chunk(text: str, model: str = "m-up") -> bytes:
    return sse(
        {"object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": text}}]}
    )


# --------------------------------------------------------------------------- telemetry


@dataclass
class Otel:
    telemetry: Telemetry
    exporter: CapturingExporter

    def collect(self) -> dict[str, Metric]:
        self.telemetry.meter_provider.force_flush()
        return self.exporter.metrics()


@pytest.fixture
def otel() -> Iterator[Otel]:
    exporter = CapturingExporter()
    telemetry = configure(metric_exporter=exporter, environ={}, export_interval_millis=3_600_000)
    try:
        yield Otel(telemetry, exporter)
    finally:
        telemetry.shutdown()


def points(metrics: dict[str, Metric], name: str, **attributes: str) -> list[Any]:
    if name not in metrics:
        return []
    return [
        dp for dp in metrics[name].data.data_points if all(dp.attributes.get(k) == v for k, v in attributes.items())
    ]


def total_count(metrics: dict[str, Metric], name: str, **attributes: str) -> int:
    return sum(dp.count for dp in points(metrics, name, **attributes))


def output_tokens(metrics: dict[str, Metric], **attributes: str) -> float:
    usage = points(metrics, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output", **attributes})
    return sum(dp.sum for dp in usage)


def error_types(metrics: dict[str, Metric]) -> list[str | None]:
    return sorted(
        (
            dp.attributes.get(semconv.ERROR_TYPE)
            for dp in points(metrics, semconv.REQUEST_DURATION)
            for _ in range(dp.count)
        ),
        key=str,
    )


# --------------------------------------------------------------------------- servers


@asynccontextmanager
async def running_synthetic(config: SyntheticConfig = FAST) -> AsyncIterator[tuple[str, ServerStats]]:
    runner, port = await synthetic.serve(config)
    try:
        yield f"http://127.0.0.1:{port}", runner.app["stats"]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def running_upstream(handler: Handler) -> AsyncIterator[str]:
    """A fake upstream: ``handler`` answers every method and path."""
    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    sock = socket.create_server(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        await runner.cleanup()


@dataclass
class Served:
    """A sidecar serving on 127.0.0.1, its URL, and how long its shutdown lets streams drain."""

    url: str
    sidecar: Sidecar
    drain_timeout: float

    @property
    def stats(self) -> SidecarStats:
        return self.sidecar.stats

    async def shutdown(self) -> None:
        """As ``tokenlat sidecar`` does on SIGTERM: drain, then close."""
        await self.sidecar.drain(self.drain_timeout)
        await self.sidecar.close()


async def start_sidecar(upstream: str, otel: Otel, drain_timeout: float = 5.0, **options: Any) -> Served:
    sidecar = Sidecar(upstream, otel.telemetry.metrics, **options)
    port = await sidecar.start("127.0.0.1", 0)
    return Served(f"http://127.0.0.1:{port}", sidecar, drain_timeout)


@asynccontextmanager
async def running_sidecar(upstream: str, otel: Otel, **options: Any) -> AsyncIterator[Served]:
    served = await start_sidecar(upstream, otel, **options)
    try:
        yield served
    finally:
        await served.shutdown()


def raw_session() -> aiohttp.ClientSession:
    # Bytes exactly as they arrive (no decompression), and no headers the test did not ask for.
    return aiohttp.ClientSession(auto_decompress=False, skip_auto_headers=("Accept-Encoding", "User-Agent"))


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


async def fetch(session: aiohttp.ClientSession, method: str, url: str, **kwargs: Any) -> Reply:
    async with session.request(method, url, **kwargs) as resp:
        body = b"".join([chunk async for chunk in resp.content.iter_any()])
        return Reply(resp.status, resp.headers.get("Content-Type", ""), body)


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- pass-through


def test_relays_streams_and_plain_responses_byte_for_byte(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    # Two synthetic servers with one seed answer request N identically, except for the wall-clock "created":
    # pin it, so any difference is the proxy's.
    monkeypatch.setattr(synthetic, "time", SimpleNamespace(time=lambda: 1_700_000_000.0))
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("POST", CHAT, {"json": chat_body()}),
        ("POST", CHAT, {"json": chat_body(stream=False)}),
        ("POST", CHAT, {"json": chat_body(stream_options={"include_usage": False}, max_tokens=3)}),
        ("GET", "/v1/models?limit=5", {}),
        ("HEAD", "/v1/models", {}),
        ("POST", CHAT, {"data": b"{not json", "headers": {"Content-Type": "application/json"}}),
        ("GET", "/nowhere", {}),
    ]

    async def body() -> None:
        async with (
            running_synthetic() as (direct, _),
            running_synthetic() as (behind, _),
            running_sidecar(behind, otel) as sidecar,
            raw_session() as session,
        ):
            for method, path, kwargs in requests:
                want = await fetch(session, method, direct + path, **kwargs)
                got = await fetch(session, method, sidecar.url + path, **kwargs)
                assert (got.status, got.content_type) == (want.status, want.content_type), path
                assert got.body == want.body, path
            assert got.status == 404
            stats = sidecar.stats
            assert (stats.requests, stats.streams, stats.passthrough, stats.upstream_errors) == (7, 2, 5, 2)

    run(body)
    # Only the two streams are measured.
    assert total_count(otel.collect(), semconv.REQUEST_DURATION) == 2


def test_forwards_method_path_query_headers_and_large_bodies_intact(otel: Otel) -> None:
    seen: list[dict[str, Any]] = []
    compressed = gzip.compress(b'{"hello": "world"}' * 100)

    async def echo(request: web.Request) -> web.StreamResponse:
        payload = await request.read()
        seen.append(
            {
                "method": request.method,
                "path_qs": request.raw_path,
                "headers": list(request.headers.items()),
                "sha256": hashlib.sha256(payload).hexdigest(),
            }
        )
        resp = web.Response(body=compressed, headers={"Content-Encoding": "gzip", "X-Upstream": "yes"})
        resp.headers.add("Set-Cookie", "a=1")
        resp.headers.add("Set-Cookie", "b=2")
        resp.content_type = "application/json"
        return resp

    big = os.urandom(3 << 20)  # larger than the 1 MiB the sidecar buffers: streamed through

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(big), 256 << 10):
            yield big[start : start + (256 << 10)]

    async def body() -> None:
        async with running_upstream(echo) as upstream, running_sidecar(upstream, otel) as sidecar, raw_session() as s:
            headers = {
                "X-Custom": "kept",
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "named in Connection: dropped",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic c2VjcmV0",
                "TE": "trailers",
            }
            url = sidecar.url + "/a%2Fb/c%20d?q=%20x&q=2&empty="
            async with s.request("PATCH", url, data=chunks(), headers=headers) as resp:
                assert resp.status == 200
                assert await resp.read() == compressed  # still gzip: relayed, not decompressed
                assert resp.headers["Content-Encoding"] == "gzip"
                assert resp.headers["X-Upstream"] == "yes"
                assert resp.headers.getall("Set-Cookie") == ["a=1", "b=2"]
            await fetch(s, "DELETE", sidecar.url + "/x", json={"model": "small"})
            upstream_port = upstream.rsplit(":", 1)[1]

        first, second = seen
        assert (first["method"], first["path_qs"]) == ("PATCH", "/a%2Fb/c%20d?q=%20x&q=2&empty=")
        assert first["sha256"] == hashlib.sha256(big).hexdigest()
        names = {name.lower(): value for name, value in first["headers"]}
        assert names["x-custom"] == "kept"
        assert names["host"] == f"127.0.0.1:{upstream_port}"
        for hop in ("x-hop", "keep-alive", "proxy-authorization", "te"):
            assert hop not in names, hop
        # Nothing the client did not send: no compression asked for on its behalf.
        assert "accept-encoding" not in names and "user-agent" not in names
        assert second["method"] == "DELETE"
        assert second["sha256"] == hashlib.sha256(json.dumps({"model": "small"}).encode()).hexdigest()

    run(body)


def test_generated_byte_streams_arrive_unchanged(otel: Otel) -> None:
    fragments = [
        b"data: ",
        b'{"object":"chat.completion.chunk","model":"m","choices":[{"index":0,"delta":{"content":"x"}}]}',
        b'{"choices":[{"delta":{"content":',
        b"\n\n",
        b"\r\n",
        b"\r",
        b"data: [DONE]\n\n",
        b": keep-alive\n",
        b"event: message_start\n",
        b'{"error": {"type": "overloaded"}}',
        "é漢🙂".encode()[:5],  # cut inside a UTF-8 sequence
        b"\xff\xfe\x80",
        b"\xef\xbb\xbf",
    ]
    streams = st.lists(st.one_of(st.binary(max_size=96), st.sampled_from(fragments)), max_size=40).map(b"".join)

    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    @given(
        data=streams,
        cuts=st.lists(st.floats(min_value=0, max_value=1), max_size=16),
        ctype=st.sampled_from(
            ["text/event-stream", "application/x-ndjson", "application/json", "application/octet-stream", ""]
        ),
    )
    def check(data: bytes, cuts: list[float], ctype: str) -> None:
        # Cut points as fractions of the stream, so that any stream gets cut anywhere.
        bounds = sorted({0, len(data), *(int(c * len(data)) for c in cuts)})
        pieces = [data[a:b] for a, b in itertools.pairwise(bounds)]

        async def upstream_handler(request: web.Request) -> web.StreamResponse:
            resp = web.StreamResponse(headers={"Content-Type": ctype} if ctype else None)
            await resp.prepare(request)
            for piece in pieces:
                await resp.write(piece)
                await asyncio.sleep(0)  # let each piece travel on its own
            await resp.write_eof()
            return resp

        async def body() -> None:
            async with (
                running_upstream(upstream_handler) as upstream,
                running_sidecar(upstream, otel, max_line_bytes=64) as sidecar,
                raw_session() as session,
            ):
                got = await fetch(session, "POST", sidecar.url + CHAT, json=chat_body())
                assert got.status == 200
                assert got.body == data
                stats = sidecar.stats
                assert (stats.requests, stats.streams + stats.passthrough) == (1, 1)
                health = await fetch(session, "GET", sidecar.url + HEALTH_PATH)
                assert health.status == 200

        run(body)

    check()


# --------------------------------------------------------------------------- measurement


def test_records_token_latency_of_proxied_streams(otel: Otel) -> None:
    counted: list[int] = []
    usages: list[dict[str, int]] = []

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        async with session.post(url + CHAT, json=chat_body(), headers={"x-user-id": "u1"}) as resp:
            events = [line async for line in resp.content if line.startswith(b"data: {")]
        chunks = [json.loads(line[6:]) for line in events]
        counted.append(sum(1 for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")))
        usages.append(chunks[-1]["usage"])

    async def body() -> None:
        async with (
            running_synthetic() as (upstream, _),
            running_sidecar(upstream, otel) as sidecar,
            aiohttp.ClientSession() as session,
        ):
            await asyncio.gather(*(one(session, sidecar.url) for _ in range(3)))  # concurrent streams

    run(body)
    metrics = otel.collect()
    attributes = {
        semconv.GEN_AI_REQUEST_MODEL: "m-sidecar",
        semconv.GEN_AI_RESPONSE_MODEL: "m-sidecar",
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_PROVIDER_NAME: "openai",
    }
    assert total_count(metrics, semconv.REQUEST_DURATION, **attributes) == 3
    assert error_types(metrics) == [None, None, None]
    assert total_count(metrics, semconv.TIME_TO_FIRST_TOKEN, **attributes) == 3
    assert all(dp.min > 0 for dp in points(metrics, semconv.TIME_TO_FIRST_TOKEN))
    assert output_tokens(metrics, **attributes) == sum(counted) == sum(u["completion_tokens"] for u in usages)
    input_usage = points(metrics, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "input"})
    assert sum(dp.sum for dp in input_usage) == sum(u["prompt_tokens"] for u in usages)
    assert total_count(metrics, semconv.INTER_TOKEN_LATENCY, **attributes) == sum(counted) - 3


def test_each_chunk_is_relayed_before_it_is_measured(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    # Measuring (parsing, recording) must never delay a chunk on its way to the client: it runs after the write,
    # with the time the chunk arrived.
    log: list[tuple[str, bytes]] = []
    write, feed = ClientProtocol.write, Exchange.feed

    def logged_write(self: Any, data: bytes) -> None:
        log.append(("relayed", data))
        write(self, data)

    def logged_feed(self: Any, chunk: bytes, arrived: float) -> None:
        log.append(("measured", http1.chunk(chunk)))  # as the client got it: the synthetic server streams chunked
        feed(self, chunk, arrived)

    monkeypatch.setattr(ClientProtocol, "write", logged_write)
    monkeypatch.setattr(Exchange, "feed", logged_feed)

    async def one(session: aiohttp.ClientSession, url: str) -> None:
        async with session.post(url + CHAT, json=chat_body()) as resp:
            await resp.read()

    async def body() -> None:
        async with (
            running_synthetic() as (upstream, _),
            running_sidecar(upstream, otel) as sidecar,
            aiohttp.ClientSession() as session,
        ):
            await asyncio.gather(*(one(session, sidecar.url) for _ in range(3)))

    run(body)
    in_flight: collections.Counter[bytes] = collections.Counter()  # relayed, not yet measured
    for what, chunk in log:
        if what == "relayed":
            in_flight[chunk] += 1
        else:
            assert in_flight[chunk] > 0, f"measured before it was relayed: {chunk[:60]!r}"
            in_flight[chunk] -= 1
    measured = sum(1 for what, _ in log if what == "measured")
    assert measured > 3 * 4 and sum(in_flight.values()) == 3 * 2  # all measured; unmeasured: the 3 heads and ends
    assert output_tokens(otel.collect()) > 0


def test_openai_client_streams_through_the_sidecar(otel: Otel) -> None:
    seen: dict[str, Any] = {}

    async def body() -> None:
        async with running_synthetic() as (upstream, _), running_sidecar(upstream, otel) as sidecar:
            client = openai.AsyncOpenAI(base_url=f"{sidecar.url}/v1", api_key="x", max_retries=0)
            try:
                stream = await client.chat.completions.create(
                    model="m-openai",
                    messages=[{"role": "user", "content": "say something short"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                text: list[str] = []
                async for chunk in stream:
                    if chunk.choices and chunk.choices[0].delta.content:
                        text.append(chunk.choices[0].delta.content)
                    if chunk.usage is not None:
                        seen["usage"] = chunk.usage
                seen["text"] = "".join(text)
            finally:
                await client.close()

    run(body)
    usage = seen["usage"]
    assert seen["text"] == "".join(token_text(i) for i in range(usage.completion_tokens))
    metrics = otel.collect()
    assert output_tokens(metrics, **{semconv.GEN_AI_REQUEST_MODEL: "m-openai"}) == usage.completion_tokens
    input_usage = points(metrics, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "input"})
    assert [dp.sum for dp in input_usage] == [usage.prompt_tokens]


# --------------------------------------------------------------------------- failures


def test_upstream_http_error_is_relayed_and_recorded_with_its_status(otel: Otel) -> None:
    error_body = b'{"error": {"message": "overloaded", "type": "server_error"}}'

    async def failing(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503, body=error_body, content_type="application/json")

    async def body() -> None:
        async with (
            running_upstream(failing) as upstream,
            running_sidecar(upstream, otel) as sidecar,
            raw_session() as s,
        ):
            got = await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())
            assert (got.status, got.body) == (503, error_body)
            # The same error for a request that did not ask for a stream is relayed, not measured.
            await fetch(s, "POST", sidecar.url + CHAT, json=chat_body(stream=False))
            assert (sidecar.stats.upstream_errors, sidecar.stats.passthrough) == (2, 2)
            # A body nested too deep for the JSON decoder (RecursionError) is no JSON body, not a sidecar failure.
            got = await fetch(s, "POST", sidecar.url + CHAT, data=b"[" * 100_000)
            assert (got.status, got.body) == (503, error_body)
            assert (sidecar.stats.upstream_errors, sidecar.stats.passthrough) == (3, 3)

    run(body)
    metrics = otel.collect()
    assert error_types(metrics) == ["503"]
    assert total_count(metrics, semconv.TIME_TO_FIRST_TOKEN) == 0


def test_upstream_refusing_connections_gives_502_and_is_recorded(otel: Otel) -> None:
    async def body() -> None:
        async with running_sidecar(f"http://127.0.0.1:{closed_port()}", otel) as sidecar, raw_session() as s:
            got = await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())
            assert got.status == 502
            assert json.loads(got.body)["error"]["type"] == UPSTREAM_UNAVAILABLE
            assert sidecar.stats.upstream_unavailable == 1
            health = await fetch(s, "GET", sidecar.url + HEALTH_PATH)
            assert health.status == 200  # the sidecar itself is fine

    run(body)
    metrics = otel.collect()
    assert error_types(metrics) == [UPSTREAM_UNAVAILABLE]
    dp = points(metrics, semconv.REQUEST_DURATION)[0]
    assert dp.attributes[semconv.GEN_AI_REQUEST_MODEL] == "m-sidecar"


def test_upstream_reset_mid_stream_breaks_the_client_stream(otel: Otel) -> None:
    sent = openai_chunk("a") + openai_chunk("b") + openai_chunk("c")
    client_has_them = asyncio.Event()

    async def resetting(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(sent)
        await client_has_them.wait()  # the client has read them through the sidecar: now break
        assert request.transport is not None
        request.transport.abort()
        return resp

    async def body() -> None:
        async with (
            running_upstream(resetting) as upstream,
            running_sidecar(upstream, otel) as sidecar,
            raw_session() as s,
        ):
            received = bytearray()
            async with s.post(sidecar.url + CHAT, json=chat_body()) as resp:
                assert resp.status == 200
                with pytest.raises(aiohttp.ClientPayloadError):
                    async for chunk in resp.content.iter_any():
                        received += chunk
                        if received == sent:
                            client_has_them.set()
            assert bytes(received) == sent  # everything upstream sent, and not a byte more
            await until(lambda: sidecar.stats.upstream_resets == 1, "the reset is counted")

    run(body)
    metrics = otel.collect()
    assert error_types(metrics) == [UPSTREAM_RESET]
    assert output_tokens(metrics) == 3
    assert points(metrics, semconv.REQUEST_DURATION)[0].attributes[semconv.GEN_AI_RESPONSE_MODEL] == "m-up"


def test_client_disconnect_stops_the_upstream_and_records_cancelled(otel: Otel) -> None:
    async def body() -> None:
        async with running_synthetic(SLOW) as (upstream, upstream_stats), running_sidecar(upstream, otel) as sidecar:
            async with aiohttp.ClientSession() as session:
                resp = await session.post(sidecar.url + CHAT, json=chat_body())
                assert (await resp.content.readline()).startswith(b"data: ")
                resp.close()
            await until(lambda: sidecar.stats.client_disconnects == 1, "the sidecar notices the disconnect")
            # The sidecar let go of the upstream too, long before the 0.4 s stream would have ended.
            await until(lambda: upstream_stats.disconnected == 1, "the upstream sees the disconnect")
            assert upstream_stats.completed == 0

    run(body)
    assert error_types(otel.collect()) == ["cancelled"]


def test_malformed_events_and_oversized_lines_are_counted_and_relayed(otel: Otel) -> None:
    stream = (
        openai_chunk("a")
        + b"data: {not json\n\n"
        + b"data: " + b"x" * 5000 + b"\n\n"
        + openai_chunk("b")
        + sse("[DONE]")
    )  # fmt: skip

    async def upstream_handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=stream, content_type="text/event-stream")

    async def body() -> None:
        async with (
            running_upstream(upstream_handler) as upstream,
            running_sidecar(upstream, otel, max_line_bytes=1024) as sidecar,
            raw_session() as s,
        ):
            got = await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())
            assert got.body == stream
            assert (sidecar.stats.malformed_events, sidecar.stats.oversized_lines) == (1, 1)

    run(body)
    metrics = otel.collect()
    assert output_tokens(metrics) == 2
    assert error_types(metrics) == [None]


def test_error_event_in_a_stream_is_recorded_as_upstream_error(otel: Otel) -> None:
    stream = openai_chunk("a") + sse({"error": {"message": "kv cache full", "type": "server_error"}})

    async def upstream_handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=stream, content_type="text/event-stream")

    async def body() -> None:
        async with running_upstream(upstream_handler) as upstream, running_sidecar(upstream, otel) as sidecar:
            async with raw_session() as s:
                assert (await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())).body == stream
            assert sidecar.stats.upstream_errors == 1

    run(body)
    assert error_types(otel.collect()) == [UPSTREAM_ERROR]


# --------------------------------------------------------------------------- streams however the network cuts them

MEASURED_CASES = [case for case in CASES if not case.name.endswith("-error")]
NO_API = "/llm/stream"  # a path that names no API: the stream's bytes must tell its format


@pytest.mark.parametrize("case", MEASURED_CASES, ids=[case.name for case in MEASURED_CASES])
def test_a_stream_written_one_byte_at_a_time_is_measured(otel: Otel, case: Case) -> None:
    # A server on a path that names no API writes its stream one byte at a time (gateways and TCP re-segmentation
    # cut streams like this). The sidecar must still recognise it and time the first token by the arrival of the
    # byte that completed its event: the server pauses just before that byte, so a time taken from any earlier
    # byte would come out short of the lower bound below.
    ndjson = case.fmt == "ollama"
    # As each server labels its stream (Triton's generate extension adds a charset).
    content_type = {"ollama": "application/x-ndjson", "triton": "text/event-stream; charset=utf-8"}.get(
        case.fmt, "text/event-stream"
    )
    first_token = next(i for i, event in enumerate(case.events) if event.tokens > 0)
    completing = completing_bytes(case.stream, ndjson)[first_token]
    assert completing is not None
    clock = otel.telemetry.metrics.clock
    marks: dict[str, float] = {}

    async def one_byte_at_a_time(request: web.Request) -> web.StreamResponse:
        marks["upstream received"] = clock()
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        for i in range(len(case.stream)):
            if i == completing:
                await asyncio.sleep(0.02)
                marks["completing byte written"] = clock()
            await resp.write(case.stream[i : i + 1])  # one chunk of the chunked body each
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    async def body() -> bytes:
        received = bytearray()
        async with (
            running_upstream(one_byte_at_a_time) as upstream,
            running_sidecar(upstream, otel) as sidecar,
            raw_session() as session,
        ):
            marks["client sent"] = clock()
            async with session.post(sidecar.url + NO_API, json={"model": "m-bytes", "stream": True}) as resp:
                async for data in resp.content.iter_any():
                    received += data
                    if len(received) > completing and "client got" not in marks:
                        marks["client got"] = clock()
            stats = sidecar.stats
            assert (stats.streams, stats.passthrough, stats.unrecognised_streams) == (1, 0, 0)
        return bytes(received)

    assert run(body) == case.stream
    metrics = otel.collect()
    tokens = sum(event.tokens for event in case.events)
    usage = [event.output_tokens for event in case.events if event.output_tokens is not None]
    assert error_types(metrics) == [None]
    assert output_tokens(metrics) == (usage[-1] if usage else tokens)
    assert total_count(metrics, semconv.INTER_TOKEN_LATENCY) == tokens - 1
    (ttft,) = points(metrics, semconv.TIME_TO_FIRST_TOKEN)
    # Causal bounds: the sidecar took the request after the client sent it and before the upstream got it; it read
    # the completing byte after the upstream wrote it and before the client got it.
    low = marks["completing byte written"] - marks["upstream received"]
    high = marks["client got"] - marks["client sent"]
    assert ttft.count == 1 and low <= ttft.sum <= high, (low, ttft.sum, high)


def test_an_unrecognised_stream_is_relayed_counted_and_warned_about_once(
    otel: Otel, caplog: pytest.LogCaptureFixture
) -> None:
    secret = b"data: my-secret-prompt-echo\n\n"  # an event stream no format knows
    # Paths come from clients: warnings stop after 100 (path, content type) pairs, the counter does not.
    paths = ["/a/stream", "/a/stream", "/b/stream", *(f"/c/{i}" for i in range(120))]

    async def upstream_handler(request: web.Request) -> web.StreamResponse:
        return web.Response(body=secret * 3, content_type="text/event-stream")

    async def body() -> None:
        async with (
            running_upstream(upstream_handler) as upstream,
            running_sidecar(upstream, otel) as sidecar,
            raw_session() as s,
        ):
            for path in paths:
                assert (await fetch(s, "POST", sidecar.url + path, json=chat_body())).body == secret * 3
            stats = sidecar.stats
            assert (stats.streams, stats.passthrough, stats.unrecognised_streams) == (0, 123, 123)

    with caplog.at_level(logging.WARNING, logger="tokenlat.sidecar"):
        run(body)
    warnings = [record.getMessage() for record in caplog.records if "matched no format" in record.getMessage()]
    assert len(warnings) == 100  # once per path and content type, for the first 100 pairs
    assert "/a/stream" in warnings[0] and "/b/stream" in warnings[1]
    assert all("--format" in w and "text/event-stream" in w and "secret" not in w for w in warnings)
    metrics = otel.collect()
    (point,) = points(metrics, UNRECOGNISED_STREAMS)
    assert point.value == 123
    assert points(metrics, semconv.TIME_TO_FIRST_TOKEN) == []


def test_slow_client_gets_every_byte(otel: Otel) -> None:
    piece = openai_chunk("y" * 1000)
    count = 8000  # ~8 MiB: more than the socket buffers hold, so the relay must wait for the reader
    sha = hashlib.sha256()

    async def fast_upstream(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for _ in range(count):
            await resp.write(piece)
        await resp.write_eof()
        return resp

    async def body() -> None:
        async with running_upstream(fast_upstream) as upstream, running_sidecar(upstream, otel) as sidecar:
            async with raw_session() as s, s.post(sidecar.url + CHAT, json=chat_body()) as resp:
                received = 0
                while chunk := await resp.content.read(64 << 10):
                    received += len(chunk)
                    sha.update(chunk)
                    await asyncio.sleep(0.001)  # the slow reader itself, not a wait for a condition
            assert received == len(piece) * count
            assert sidecar.stats.streams == 1

    run(body)
    assert sha.hexdigest() == hashlib.sha256(piece * count).hexdigest()
    assert output_tokens(otel.collect()) == count


# --------------------------------------------------------------------------- endpoints and drain


def test_health_stats_and_the_reserved_prefix(otel: Otel) -> None:
    async def body() -> None:
        async with (
            running_synthetic() as (upstream, upstream_stats),
            running_sidecar(upstream, otel) as sidecar,
            raw_session() as s,
        ):
            health = await fetch(s, "GET", sidecar.url + HEALTH_PATH)
            assert (health.status, json.loads(health.body)) == (200, {"status": "serving"})
            await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())
            stats = json.loads((await fetch(s, "GET", sidecar.url + STATS_PATH)).body)
            assert stats["requests"] == 1 and stats["streams"] == 1 and stats["draining"] is False
            assert set(stats) >= {
                "requests", "streams", "passthrough", "upstream_errors", "upstream_unavailable",
                "upstream_resets", "client_disconnects", "malformed_events", "oversized_lines",
            }  # fmt: skip
            # The whole prefix is the sidecar's: never proxied.
            reserved = await fetch(s, "POST", sidecar.url + "/-/tokenlat/anything", json=chat_body())
            assert reserved.status == 404
            assert upstream_stats.started == 1 and sidecar.stats.requests == 1

            sidecar.sidecar.begin_drain()
            assert (await fetch(s, "GET", sidecar.url + HEALTH_PATH)).status == 503
            assert (await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())).status == 503
            assert sidecar.stats.rejected == 1 and upstream_stats.started == 1

    run(body)


def test_shutdown_drains_in_flight_streams(otel: Otel) -> None:
    async def body() -> None:
        async with running_synthetic(SLOW) as (upstream, upstream_stats):
            sidecar = await start_sidecar(upstream, otel)
            port = int(sidecar.url.rsplit(":", 1)[1])
            async with aiohttp.ClientSession() as session:
                resp = await session.post(sidecar.url + CHAT, json=chat_body())
                first = await resp.content.readline()
                assert first.startswith(b"data: ")
                shutdown = asyncio.create_task(sidecar.shutdown())
                await until(lambda: not accepts(port), "the sidecar stops accepting connections")
                rest = await resp.read()
                resp.release()
                await shutdown
            lines = [line for line in (first + rest).split(b"\n") if line.startswith(b"data: ")]
            assert lines[-1] == b"data: [DONE]"
            assert upstream_stats.completed == 1

    run(body)
    metrics = otel.collect()
    assert error_types(metrics) == [None]
    assert output_tokens(metrics) == 40


def test_close_after_the_drain_timeout_cuts_what_is_left(otel: Otel) -> None:
    async def body() -> bytes:
        async with running_synthetic(SLOW) as (upstream, _):
            sidecar = await start_sidecar(upstream, otel)
            async with aiohttp.ClientSession() as session:
                resp = await session.post(sidecar.url + CHAT, json=chat_body())
                first = await resp.content.readline()
                assert first.startswith(b"data: ")
                # The stream has some 400 ms to go: a drain of 50 ms ends with it in flight, and close cuts it.
                assert await sidecar.sidecar.drain(0.05) is False
                assert sidecar.stats.in_flight == 1
                await sidecar.sidecar.close()
                assert sidecar.stats.in_flight == 0 and sidecar.stats.client_disconnects == 1
                with pytest.raises(aiohttp.ClientPayloadError):
                    await resp.read()  # the client sees a broken stream, not a complete one
                resp.release()
                await sidecar.sidecar.close()  # idempotent
            return first

    run(body)
    assert error_types(otel.collect()) == ["cancelled"]


def accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# --------------------------------------------------------------------------- the wire, byte by byte
# The sidecar writes HTTP/1.1 itself (httptools parses it): the framing cases no aiohttp peer would produce.

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Coroutine[Any, Any, None]]


@asynccontextmanager
async def raw_upstream(handler: RawHandler) -> AsyncIterator[str]:
    """An upstream that writes exactly the bytes ``handler`` writes."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


async def read_head(reader: asyncio.StreamReader) -> bytes:
    return await reader.readuntil(b"\r\n\r\n")


async def raw_request(url: str, data: bytes) -> bytes:
    """Send ``data`` as it is and read everything until the sidecar closes the connection."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        return await asyncio.wait_for(reader.read(), POLL_DEADLINE_S)
    finally:
        writer.close()


class RecvUpstream:
    """An upstream on a plain blocking socket in a thread, noting what each ``recv`` returned: what the sidecar's
    writes became on the wire (an asyncio upstream in the test's loop would read both of two writes at once)."""

    RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.reads: list[bytes] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        with contextlib.suppress(OSError):  # the listening socket closed: the test is over
            while True:
                conn, _ = self.sock.accept()
                threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        with conn, contextlib.suppress(OSError):
            pending = b""
            while data := conn.recv(65536):
                self.reads.append(data)
                pending += data
                while b"\r\n\r\n" in pending:  # answer every complete request, however it arrived
                    head, rest = pending.split(b"\r\n\r\n", 1)
                    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
                    if len(rest) < length:
                        break
                    pending = rest[length:]
                    conn.sendall(self.RESPONSE)

    def close(self) -> None:
        self.sock.close()


def test_a_small_requests_head_and_body_reach_the_upstream_in_one_read(otel: Otel) -> None:
    # The request head and the body parsed from the same read of the client go upstream as one write, also on a
    # kept-alive connection from the pool (where the head used to leave before its body was parsed).
    upstream = RecvUpstream()
    body = json.dumps(chat_body(stream=False)).encode()

    async def requests() -> None:
        async with (
            running_sidecar(upstream.url, otel) as sidecar,
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session,
        ):
            for _ in range(20):
                async with session.post(
                    sidecar.url + CHAT, data=body, headers={"Content-Type": "application/json"}
                ) as r:
                    assert (r.status, await r.read()) == (200, b"ok")
            assert len(sidecar.sidecar.pool.idle) == 1  # one upstream connection, reused by every request

    try:
        run(requests)
    finally:
        upstream.close()
    assert len(upstream.reads) == 20
    for read in upstream.reads:
        assert read.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n") and read.endswith(b"\r\n\r\n" + body)


def test_pipelined_requests_are_answered_in_order(otel: Otel) -> None:
    async def echo_path(request: web.Request) -> web.Response:
        return web.Response(text=request.path)

    async def body() -> bytes:
        async with running_upstream(echo_path) as upstream, running_sidecar(upstream, otel) as sidecar:
            two = b"GET /first HTTP/1.1\r\nHost: x\r\n\r\nGET /second HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            return await raw_request(sidecar.url, two)

    answer = run(body)
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert answer.index(b"/first") < answer.index(b"/second")


def test_a_body_delimited_by_the_end_of_the_connection_is_relayed_whole(otel: Otel) -> None:
    stream = openai_chunk("a") + openai_chunk("b") + sse("[DONE]")

    async def closing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        await reader.readexactly(len(json.dumps(chat_body())))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n" + stream)
        writer.close()  # no Content-Length, no chunks: the end of the connection ends the body

    async def body() -> tuple[bytes, bytes]:
        async with raw_upstream(closing) as upstream, running_sidecar(upstream, otel) as sidecar:
            async with raw_session() as s:
                got = await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())
            # An HTTP/1.0 client cannot take chunks: its body ends with the connection too.
            request = json.dumps(chat_body()).encode()
            head = b"POST %s HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % (CHAT.encode(), len(request))
            return got.body, await raw_request(sidecar.url, head + request)

    chunked_client, http10_client = run(body)
    assert chunked_client == stream
    assert http10_client.endswith(b"\r\n\r\n" + stream) and b"chunked" not in http10_client
    metrics = otel.collect()
    assert output_tokens(metrics) == 4 and error_types(metrics) == [None, None]


def test_interim_responses_and_expect_continue(otel: Otel) -> None:
    async def hinting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await read_head(reader)
        assert b"expect" not in head.lower()  # the sidecar answered it
        await reader.readexactly(2)
        writer.write(
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        await writer.drain()

    async def body() -> bytes:
        async with raw_upstream(hinting) as upstream, running_sidecar(upstream, otel) as sidecar:
            host, port = sidecar.url.removeprefix("http://").split(":")
            reader, writer = await asyncio.open_connection(host, int(port))
            try:
                writer.write(b"PUT /x HTTP/1.1\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n")
                assert await read_head(reader) == b"HTTP/1.1 100 Continue\r\n\r\n"  # before the body is sent
                writer.write(b"hi")
                return await read_head(reader) + await read_head(reader) + await reader.readexactly(2)
            finally:
                writer.close()

    answer = run(body)
    assert answer.startswith(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\n")
    assert answer.endswith(b"\r\n\r\nok")


def test_client_connections_send_small_writes_at_once(otel: Otel) -> None:
    # With Nagle's algorithm on, a token written right after the response head waited for the client's delayed
    # ACK: 30-40 ms, seen in make bench. asyncio turns it off only on sockets it created itself.
    async def body() -> list[int]:
        async with running_synthetic() as (upstream, _), running_sidecar(upstream, otel) as sidecar:
            host, port = sidecar.url.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            try:
                await until(lambda: bool(sidecar.sidecar.connections), "the sidecar has the connection")
                return [
                    client.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
                    for client in sidecar.sidecar.connections
                    if client.transport is not None
                ]
            finally:
                writer.close()

    assert run(body) == [1]


def test_malformed_requests_and_responses_are_refused_cleanly(otel: Otel) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(b"NOT HTTP AT ALL\r\n\r\n")
        await writer.drain()

    async def body() -> tuple[bytes, Reply]:
        async with raw_upstream(garbage) as upstream, running_sidecar(upstream, otel) as sidecar:
            bad_request = await raw_request(sidecar.url, b"GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n")
            upgrade = b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
            refused = await raw_request(sidecar.url, upgrade)
            assert refused.startswith(b"HTTP/1.1 501 Not Implemented\r\n") and refused.count(b"HTTP/1.1") == 1
            assert sidecar.stats.requests == 0  # neither reached the upstream
            # Broken inside a body already on its way upstream: no answer can follow, the connection closes.
            broken_body = b"POST /v1/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\nzz\r\n"
            assert await raw_request(sidecar.url, broken_body) == b""
            await until(lambda: sidecar.stats.client_disconnects == 1, "the broken request is given up")
            async with raw_session() as s:
                bad_response = await fetch(s, "GET", sidecar.url + "/v1/models")
            assert sidecar.stats.upstream_resets == 1
            return bad_request, bad_response

    bad_request, bad_response = run(body)
    assert bad_request.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert bad_response.status == 502 and json.loads(bad_response.body)["error"]["type"] == UPSTREAM_RESET


# --------------------------------------------------------------------------- small pieces


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        ("/v1/chat/completions", "chat"),
        ("/api/chat", "chat"),
        ("/v1/messages", "chat"),
        ("/v1/completions", "text_completion"),
        ("/generate_stream", "generate"),
        ("/v2/models/llama/generate_stream", "generate"),
    ],
)
def test_operation_name_from_the_path(path: str, operation: str) -> None:
    assert operation_name(path) == operation


def test_the_measure_path_benchmark_runs() -> None:
    """``python -m bench.measure_path`` drives the measuring as the protocols do: it must keep up with its API."""
    from bench import measure_path

    figures = measure_path.run(streams=3, repeats=1)
    assert len(figures) == 3 and all(0 < us < 10_000 for us in figures.values())


@pytest.mark.parametrize(
    "upstream", ["ftp://host", "127.0.0.1:8000", "http://", "http://h/?q=1", "http://h/#f", "http://u:p@h:8000"]
)
def test_bad_upstream_urls_are_rejected(upstream: str) -> None:
    with pytest.raises(ValueError, match=r"must|is not a URL") as refused:
        validate_upstream(upstream)
    assert ":p@" not in str(refused.value)  # a credential is never echoed


def test_upstream_path_prefix_is_kept(otel: Otel) -> None:
    assert validate_upstream("http://gateway:8080/llm/") == "http://gateway:8080/llm"

    async def echo_path(request: web.Request) -> web.Response:
        return web.Response(text=request.raw_path)

    async def body() -> bytes:
        async with (
            running_upstream(echo_path) as upstream,
            running_sidecar(upstream + "/llm/", otel) as sidecar,
            raw_session() as s,
        ):
            return (await fetch(s, "GET", sidecar.url + "/v1/models?x=%20")).body

    assert run(body) == b"/llm/v1/models?x=%20"


def test_unknown_format_is_rejected(otel: Otel) -> None:
    with pytest.raises(ValueError, match="unknown format 'sse'"):
        Sidecar("http://127.0.0.1:1", otel.telemetry.metrics, fmt="sse")


# --------------------------------------------------------------------------- connection limits
# Short timeouts (0.3 s) so that the tests wait little; every wait is by polling, bounded by POLL_DEADLINE_S.

LIMIT_S = 0.3
HALF_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le"


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the sidecar sends until it closes the connection (a liveness bound, not a timing)."""
    return await asyncio.wait_for(reader.read(), POLL_DEADLINE_S)


async def read_response(reader: asyncio.StreamReader) -> bytes:
    """One response with a Content-Length, on a connection that stays open."""
    head = await asyncio.wait_for(read_head(reader), POLL_DEADLINE_S)
    length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
    return head + await reader.readexactly(length)


def gappy_upstream(chunks: list[bytes], gap: float) -> Handler:
    """An upstream streaming ``chunks`` with ``gap`` seconds between them: a slow model, not a slow client."""

    async def handler(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, chunk in enumerate(chunks):
            if i:
                await asyncio.sleep(gap)  # the upstream's own pace, not a wait for a condition
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    return handler


def test_an_idle_keep_alive_connection_is_closed_but_a_stream_with_long_gaps_is_not(otel: Otel) -> None:
    chunks = [openai_chunk(f"t{i}") for i in range(3)] + [sse("[DONE]")]

    async def body() -> None:
        upstream_handler = gappy_upstream(chunks, gap=2 * LIMIT_S)  # each gap longer than the idle timeout
        async with (
            running_upstream(upstream_handler) as upstream,
            running_sidecar(upstream, otel, idle_timeout=LIMIT_S, head_timeout=60.0) as sidecar,
        ):
            async with raw_session() as s:
                reply = await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())
                assert reply.status == 200 and reply.body == b"".join(chunks)  # byte for byte, not cut
                assert sidecar.stats.idle_timeouts == 0 and sidecar.stats.streams == 1
                # Now the session's connection is idle between requests: closed after the timeout, and counted.
                await until(lambda: sidecar.stats.idle_timeouts == 1, "the idle connection is closed")
                # Counted as the timer closes it; no longer open once its transport reports the loss (a turn later).
                await until(lambda: sidecar.stats.connections == 0, "the closed connection is gone")

            # A raw keep-alive connection: answered, then closed once idle; one that never sends a byte, too.
            reader, writer = await open_raw(sidecar.url)
            silent_reader, silent_writer = await open_raw(sidecar.url)
            writer.write(b"GET " + HEALTH_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await until_closed(reader)
            assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b'{"status": "serving"}')
            assert await until_closed(silent_reader) == b""
            writer.close()
            silent_writer.close()
            await until(lambda: sidecar.stats.idle_timeouts == 3, "every idle connection is counted")
            assert sidecar.stats.head_timeouts == 0 and sidecar.stats.client_disconnects == 0

    run(body)
    assert error_types(otel.collect()) == [None]


def test_a_half_request_head_is_answered_408_and_closed(otel: Otel) -> None:
    async def body() -> None:
        async with (
            running_synthetic() as (upstream, upstream_stats),
            running_sidecar(upstream, otel, idle_timeout=60.0, head_timeout=LIMIT_S) as sidecar,
        ):
            reader, writer = await open_raw(sidecar.url)
            writer.write(HALF_HEAD)
            answer = await until_closed(reader)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b"Connection: close\r\n" in answer
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["type"] == "request_timeout"
            assert sidecar.stats.head_timeouts == 1 and sidecar.stats.idle_timeouts == 0
            assert sidecar.stats.requests == 0 and upstream_stats.started == 0  # nothing reached the upstream

            # A head that completes in time is served; the timer is the head's, not the connection's.
            reader, writer = await open_raw(sidecar.url)
            writer.write(b"GET " + HEALTH_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await read_response(reader)).startswith(b"HTTP/1.1 200 ")
            writer.close()
            assert sidecar.stats.head_timeouts == 1

    run(body)


def test_decoded_paths_are_cached_per_path_within_bounds() -> None:
    cache = protocol._decode_cached_path
    cache.cache_clear()
    # Queries vary per request and do not count; the path is decoded for the sidecar's decisions.
    assert {decoded_path(b"/v1/a%20b?n=" + str(n).encode()) for n in range(50)} == {"/v1/a b"}
    assert decoded_path(b"http://model:8000/v1/chat/completions?x") == "/v1/chat/completions"
    assert cache.cache_info().currsize == 2
    # A path longer than the bound is decoded each time, never kept.
    long = b"/" + b"p" * protocol.DECODED_PATH_CACHED_BYTES
    assert decoded_path(long + b"?q") == long.decode()
    assert cache.cache_info().currsize == 2
    # However many distinct paths clients send, the cache holds at most its bound.
    for n in range(protocol.DECODED_PATHS_CACHED + 50):
        assert decoded_path(b"/p%d" % n) == f"/p{n}"
    assert cache.cache_info().currsize == protocol.DECODED_PATHS_CACHED


def test_keep_alive_requests_arm_no_timer_each(otel: Otel, monkeypatch: pytest.MonkeyPatch) -> None:
    # Request boundaries set and clear a deadline; the connection's one timer re-arms itself only when it fires.
    armed: list[float] = []
    arm = ClientProtocol._arm

    def counted(self: ClientProtocol, loop: asyncio.AbstractEventLoop, when: float) -> None:
        armed.append(when)
        arm(self, loop, when)

    monkeypatch.setattr(ClientProtocol, "_arm", counted)
    requests = 20

    async def body() -> None:
        async with (
            running_synthetic() as (upstream, _),
            running_sidecar(upstream, otel, idle_timeout=60.0, head_timeout=60.0) as sidecar,
            raw_session() as s,
        ):
            for _ in range(requests):
                reply = await fetch(s, "POST", sidecar.url + CHAT, json=chat_body())
                assert reply.status == 200 and reply.body.endswith(b"data: [DONE]\n\n")
            assert sidecar.stats.streams == requests and sidecar.stats.connections == 1  # one kept-alive connection

    run(body)
    assert len(armed) == 1  # at the connection's start, for its idle deadline; never again within the minute


def test_connections_beyond_the_maximum_get_503_with_retry_after(otel: Otel) -> None:
    async def body() -> None:
        async with running_sidecar("http://127.0.0.1:1", otel, max_connections=3) as sidecar:
            held = [await open_raw(sidecar.url) for _ in range(3)]
            await until(lambda: sidecar.stats.connections == 3, "three connections accepted")
            reader, writer = await open_raw(sidecar.url)
            writer.write(b"GET " + HEALTH_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await until_closed(reader)  # answered and closed: not held open
            writer.close()
            head, payload = answer.split(b"\r\n\r\n", 1)
            assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
            assert f"Retry-After: {RETRY_AFTER_S}\r\n".encode() in head and b"Connection: close" in head
            assert json.loads(payload)["error"]["type"] == "too_many_connections"
            assert sidecar.stats.refused_connections == 1 and sidecar.stats.connections == 3
            await until(lambda: not sidecar.sidecar.refused, "the refused connection is gone")

            # One of the three closes: a new connection is served.
            held.pop()[1].close()
            await until(lambda: sidecar.stats.connections == 2, "the closed connection is gone")
            reader, writer = await open_raw(sidecar.url)
            writer.write(b"GET " + STATS_PATH.encode() + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = await read_response(reader)
            writer.close()
            assert answer.startswith(b"HTTP/1.1 200 ")
            assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["refused_connections"] == 1
            for _, held_writer in held:
                held_writer.close()

    run(body)


def test_the_default_maximum_of_connections_fits_the_file_descriptor_limit(otel: Otel) -> None:
    assert default_max_connections(100, limit=1 << 20) == MAX_CONNECTIONS
    assert default_max_connections(100, limit=1024) == 430  # (1024 - 64 reserved - 100 idle upstream) // 2
    assert default_max_connections(100, limit=100) == 1
    metrics = otel.telemetry.metrics
    assert Sidecar("http://127.0.0.1:1", metrics).settings.max_connections == default_max_connections(100)
    for bad in ({"idle_timeout": 0}, {"head_timeout": -1.0}, {"max_connections": 0}, {"max_idle_upstream": -1}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            Sidecar("http://127.0.0.1:1", metrics, **bad)


def test_the_upstream_pool_keeps_at_most_its_cap_of_idle_connections(otel: Otel) -> None:
    concurrent = 5
    arrived: list[asyncio.Event] = []
    all_here = asyncio.Event()

    async def barrier(request: web.Request) -> web.Response:
        arrived.append(asyncio.Event())
        if len(arrived) == concurrent:
            all_here.set()
        await all_here.wait()  # every request holds its upstream connection until all five are open
        return web.Response(text="ok")

    async def body() -> None:
        async with (
            running_upstream(barrier) as upstream,
            running_sidecar(upstream, otel, max_idle_upstream=2) as sidecar,
            raw_session() as s,
        ):
            replies = await asyncio.gather(*(fetch(s, "GET", sidecar.url + "/v1/models") for _ in range(concurrent)))
            assert [r.body for r in replies] == [b"ok"] * concurrent
            assert len(sidecar.sidecar.pool.idle) == 2
            assert sidecar.stats.upstream_idle_closed == concurrent - 2
            # The kept ones are reused: a next request opens no connection and closes none.
            assert (await fetch(s, "GET", sidecar.url + "/v1/models")).body == b"ok"
            assert len(sidecar.sidecar.pool.idle) == 2 and sidecar.stats.upstream_idle_closed == concurrent - 2

    run(body)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts file descriptors in /proc")
def test_hundreds_of_idle_and_slowloris_connections_are_closed_while_streams_go_on(otel: Otel) -> None:
    idle, slow, streams = 200, 200, 10
    started = time.monotonic()

    def chunks(n: int) -> list[bytes]:
        return [openai_chunk(f"s{n}-t{i}") for i in range(8)] + [sse("[DONE]")]

    async def numbered(request: web.Request) -> web.StreamResponse:
        n = int(request.query["n"])
        return await gappy_upstream(chunks(n), gap=LIMIT_S / 2)(request)  # about 1.4 s a stream

    async def body() -> None:
        async with (
            running_upstream(numbered) as upstream,
            running_sidecar(upstream, otel, idle_timeout=LIMIT_S, head_timeout=LIMIT_S) as sidecar,
            aiohttp.ClientSession(auto_decompress=False) as s,
        ):
            baseline = open_fds()
            running = [
                asyncio.create_task(fetch(s, "POST", f"{sidecar.url}{CHAT}?n={n}", json=chat_body()))
                for n in range(streams)
            ]
            await until(lambda: sidecar.stats.in_flight == streams, "the streams are running")
            opened = time.monotonic()
            idlers = [await open_raw(sidecar.url) for _ in range(idle)]
            slowlorises = []
            for _ in range(slow):
                # The half head goes out at once: written after opening them all, it could find a connection the
                # idle timeout (before a first byte) had closed already on a slow machine, and draw a reset.
                reader, writer = await open_raw(sidecar.url)
                writer.write(HALF_HEAD)
                slowlorises.append((reader, writer))
            answers = await asyncio.gather(*(until_closed(reader) for reader, _ in idlers + slowlorises))
            closed_within = time.monotonic() - opened
            assert answers[:idle] == [b""] * idle
            assert all(a.startswith(b"HTTP/1.1 408 ") for a in answers[idle:])
            assert sidecar.stats.in_flight == streams  # the streams outlived every one of them
            replies = await asyncio.gather(*running)
            for n, reply in enumerate(replies):
                assert reply.status == 200 and reply.body == b"".join(chunks(n))  # complete, byte for byte
            assert sidecar.stats.head_timeouts == slow and sidecar.stats.idle_timeouts >= idle
            assert sidecar.stats.client_disconnects == 0 and sidecar.stats.streams == streams
            for _, writer in idlers + slowlorises:
                writer.close()
            await s.close()  # the streams' keep-alive connections: closed by the client this time
            await until(lambda: sidecar.stats.connections == 0, "every client connection is closed")
            # What stays open: the pooled upstream connections, both of their ends being in this process.
            pooled = len(sidecar.sidecar.pool.idle)
            await until(lambda: open_fds() <= baseline + 2 * pooled + 2, "the descriptors are released")
            # Closed within the bound: the timeout, plus the time to open them all (a liveness bound, not a timing).
            assert closed_within < POLL_DEADLINE_S

    run(body)
    assert time.monotonic() - started < 30
    assert error_types(otel.collect()) == [None] * streams


# --------------------------------------------------------------------------- command line


class _OtlpReceiver(BaseHTTPRequestHandler):
    bodies: list[bytes]

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length", "0"))
        type(self).bodies.append(self.rfile.read(length))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handling is POSIX-only")
def test_cli_proxies_and_flushes_telemetry_on_sigterm() -> None:
    receiver_class = type("Receiver", (_OtlpReceiver,), {"bodies": []})
    receiver = ThreadingHTTPServer(("127.0.0.1", 0), receiver_class)
    thread = threading.Thread(target=receiver.serve_forever, daemon=True)
    thread.start()
    env = {
        **os.environ,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{receiver.server_address[1]}",
        "OTEL_METRIC_EXPORT_INTERVAL": "3600000",  # only the flush at shutdown exports
    }
    upstream = subprocess.Popen(
        [sys.executable, "-m", "tokenlat_cli.verify.synthetic", "--port", "0", "--ttft", "fixed:0.001", "--inter-token",
         "fixed:0.001", "--output-tokens", "3"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    proxy: subprocess.Popen[str] | None = None
    try:
        upstream_url = read_line(upstream, 20).removeprefix(synthetic.LISTENING_PREFIX).strip()
        proxy = subprocess.Popen(
            [sys.executable, "-m", "tokenlat_cli", "sidecar", "--upstream", upstream_url, "--listen", "127.0.0.1:0"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        line = read_line(proxy, 20)
        match = re.fullmatch(r"tokenlat sidecar listening on (http://127\.0\.0\.1:(\d+)) -> (\S+)\n", line)
        assert match, line
        assert int(match.group(2)) > 0 and match.group(3) == upstream_url
        request = urllib.request.Request(
            match.group(1) + CHAT, data=json.dumps(chat_body()).encode(), headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as resp:
            assert resp.read().endswith(b"data: [DONE]\n\n")
        proxy.send_signal(signal.SIGTERM)
        assert proxy.wait(timeout=20) == 0
        assert proxy.stdout is not None and proxy.stdout.read() == ""  # exactly one line
        assert proxy.stderr is not None and "Traceback" not in proxy.stderr.read()
        assert any(semconv.REQUEST_DURATION.encode() in body for body in receiver_class.bodies)
    finally:
        if proxy is not None:
            stop(proxy)
        stop(upstream)
        receiver.shutdown()
        receiver.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--upstream", "ftp://127.0.0.1:1"], "--upstream"),
        (["--upstream", "http://127.0.0.1:1", "--listen", "localhost"], "--listen"),
        (["--upstream", "http://127.0.0.1:1", "--listen", "127.0.0.1:99999"], "--listen"),
        (["--upstream", "http://127.0.0.1:1", "--listen", "::1:9000"], "--listen"),
        (["--upstream", "http://127.0.0.1:1", "--format", "sse"], "--format"),
        (["--upstream", "http://127.0.0.1:1", "--detect-bytes", "0"], "--detect-bytes"),
        (["--upstream", "http://127.0.0.1:1", "--idle-timeout", "0"], "--idle-timeout"),
        (["--upstream", "http://127.0.0.1:1", "--head-timeout", "-1"], "--head-timeout"),
        (["--upstream", "http://127.0.0.1:1", "--max-connections", "0"], "--max-connections"),
        (["--upstream", "http://127.0.0.1:1", "--max-idle-upstream", "-1"], "--max-idle-upstream"),
        (["--upstream", "http://127.0.0.1:1", "--max-json-body", "-1"], "--max-json-body"),
        (["--upstream", "http://127.0.0.1:1", "--max-line-bytes", "0"], "--max-line-bytes"),
        (["--listen", "127.0.0.1:0"], "--upstream"),
    ],
)
def test_cli_bad_options_exit_2_naming_the_option(args: list[str], option: str) -> None:
    result = CliRunner().invoke(cli, ["sidecar", *args])
    assert result.exit_code == 2, result.output
    assert option in result.output


def test_every_other_cli_option_is_a_sidecar_keyword_of_its_name() -> None:
    """The command hands its options to Sidecar(...) by name: an option added to one and not the other fails here,
    not on an operator's first start."""
    own = {"upstream", "listen", "drain_timeout", "loop"}  # the command's own: where to serve, how to stop
    handed_over = {param.name for param in sidecar_command.params} - own
    keywords = {
        name
        for name, param in inspect.signature(Sidecar).parameters.items()
        if param.kind is inspect.Parameter.KEYWORD_ONLY
    }
    assert handed_over <= keywords, handed_over - keywords
    assert keywords - handed_over == {"measure"}  # the benchmark's control, not an operator's setting


def test_the_event_loop_is_uvloop_when_installed_else_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    assert loops.resolve("asyncio") == "asyncio"
    assert loops.resolve("auto") == "uvloop"  # the [sidecar] extra installs it
    monkeypatch.setattr(loops.importlib.util, "find_spec", lambda name: None)
    assert loops.resolve("auto") == "asyncio"
    with pytest.raises(ValueError, match="uvloop event loop is not installed"):
        loops.resolve("uvloop")
    with pytest.raises(ValueError, match="unknown event loop 'trio'"):
        loops.resolve("trio")


def test_loops_run_returns_what_the_coroutine_returns() -> None:
    async def answer() -> str:
        return type(asyncio.get_running_loop()).__module__.split(".")[0]

    assert loops.run(answer(), "uvloop") == "uvloop"
    assert loops.run(answer(), "asyncio") == "asyncio"


# --------------------------------------------------------------------------- model names from clients


def recorded_models(metrics: dict[str, Metric]) -> collections.Counter[tuple[Any, Any]]:
    """(request model, response model) -> requests, from the duration histogram."""
    counts: collections.Counter[tuple[Any, Any]] = collections.Counter()
    for dp in points(metrics, semconv.REQUEST_DURATION):
        attrs = dp.attributes
        counts[attrs.get(semconv.GEN_AI_REQUEST_MODEL), attrs.get(semconv.GEN_AI_RESPONSE_MODEL)] += dp.count
    return counts


def stream_models(otel: Otel, names: list[str], **options: Any) -> dict[str, Metric]:
    """One stream per name, one after another, through a sidecar with ``options``; the synthetic server answers
    with the model the request named, so both attributes come from the client."""

    async def body() -> None:
        async with (
            running_synthetic() as (upstream, _),
            running_sidecar(upstream, otel, **options) as sidecar,
            aiohttp.ClientSession() as session,
        ):
            for model in names:
                reply = await fetch(session, "POST", sidecar.url + CHAT, json=chat_body(model))
                assert reply.status == 200

    run(body)
    return otel.collect()


def test_model_names_beyond_the_cap_are_recorded_as_other(otel: Otel, caplog: pytest.LogCaptureFixture) -> None:
    long = "x" * (MAX_MODEL_CHARS + 1)
    with caplog.at_level(logging.WARNING, logger="tokenlat.sidecar"):
        metrics = stream_models(otel, ["a", "b", "c", "a", "d", "b", long], max_models=2)
    assert recorded_models(metrics) == {("a", "a"): 2, ("b", "b"): 2, (OTHER_VALUE, OTHER_VALUE): 3}
    (other,) = metrics[OTHER_MODELS].data.data_points
    assert other.value == 6  # three requests, each with a request and a response model
    warnings = [r for r in caplog.records if "recorded as" in r.getMessage()]
    assert len(warnings) == 1 and "--max-models 2" in warnings[0].getMessage()
    assert "c" not in warnings[0].args and long not in caplog.text  # client-chosen names are never logged


def test_an_allowlist_of_model_names_admits_only_those(otel: Otel) -> None:
    metrics = stream_models(otel, ["qwen", "llama", "qwen", "mistral"], models=["qwen", "mistral"], max_models=0)
    assert recorded_models(metrics) == {("qwen", "qwen"): 2, ("mistral", "mistral"): 1, (OTHER_VALUE, OTHER_VALUE): 1}


@pytest.mark.parametrize("max_json_body", [None, 0])
def test_a_body_beyond_max_json_body_is_relayed_whole_without_its_model_read(
    otel: Otel, max_json_body: int | None
) -> None:
    """The bound on the request body kept to read its model (a body is parsed on the event loop, so its size is a
    wait for every stream): beyond it the request still reaches the upstream whole (the synthetic server answers
    with the model the body names), and is recorded without gen_ai.request.model, and counted."""
    small = chat_body("m-small")
    large = chat_body("m-large", user="x" * 600)
    limit = len(json.dumps(small)) + 10 if max_json_body is None else max_json_body
    assert len(json.dumps(large)) > limit

    async def body() -> SidecarStats:
        async with (
            running_synthetic() as (upstream, _),
            running_sidecar(upstream, otel, max_json_body=limit) as sidecar,
            aiohttp.ClientSession() as session,
        ):
            for request in (small, large):
                assert (await fetch(session, "POST", sidecar.url + CHAT, json=request)).status == 200
            return sidecar.stats

    stats = run(body)
    expected_small = ("m-small" if limit else None, "m-small")
    assert recorded_models(otel.collect()) == {expected_small: 1, (None, "m-large"): 1}
    assert stats.oversized_bodies == (1 if limit else 2)
    assert stats.streams == 2


def test_body_and_line_limits_are_checked(otel: Otel) -> None:
    with pytest.raises(ValueError, match="max_json_body must be at least 0, got -1"):
        Sidecar("http://127.0.0.1:1", otel.telemetry.metrics, max_json_body=-1)
    with pytest.raises(ValueError, match="max_line_bytes must be at least 1, got 0"):
        Sidecar("http://127.0.0.1:1", otel.telemetry.metrics, max_line_bytes=0)


def test_model_name_settings_are_checked(otel: Otel) -> None:
    with pytest.raises(TypeError, match="single str"):
        Sidecar("http://127.0.0.1:1", otel.telemetry.metrics, models="qwen")
    with pytest.raises(ValueError, match="max_models"):
        Sidecar("http://127.0.0.1:1", otel.telemetry.metrics, max_models=-1)
