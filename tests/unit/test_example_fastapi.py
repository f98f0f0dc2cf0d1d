"""The FastAPI example app: in-process through httpx's ASGI transport, and over a real socket (uvicorn in a thread)
for a client that goes away mid-stream, which the ASGI transport cannot do (it reads the whole body)."""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from opentelemetry.sdk.metrics.export import HistogramDataPoint, Metric
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from examples.fastapi_app.app import REPLY, create_app
from tests.otel_helpers import CapturingExporter
from tokenlat import Telemetry, configure, semconv
from tokenlat.privacy import UserIdHasher
from tokenlat.recorder import CANCELLED

KEY = "example-test-key"
USER_ID = "alice@example.com"
REQUEST_ID = "req-7f3a"
HEADERS = {"x-user-id": USER_ID, "x-user-tier": "pro", "x-request-id": REQUEST_ID}
PROMPT = "how fast is the first token"  # 6 words: the example counts words as tokens


@dataclass
class Captured:
    """A Telemetry from configure() whose exporters keep everything in memory."""

    telemetry: Telemetry
    exporter: CapturingExporter
    spans: InMemorySpanExporter

    def collect(self) -> dict[str, Metric]:
        self.telemetry.meter_provider.force_flush()
        return self.exporter.metrics() if self.exporter.exports else {}


@pytest.fixture
def captured() -> Iterator[Captured]:
    exporter, spans = CapturingExporter(), InMemorySpanExporter()
    telemetry = configure(
        metric_exporter=exporter,
        span_exporter=spans,
        spans=True,
        environ={"TOKENLAT_USER_ID_KEY": KEY},  # and nothing else from this machine's environment
        export_interval_millis=3_600_000,  # exports happen when the test flushes
    )
    yield Captured(telemetry, exporter, spans)
    telemetry.shutdown()


def chat(
    max_tokens: int, *, stream: bool = True, include_usage: bool = False, model: str = "qwen3-8b"
) -> dict[str, Any]:
    return {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "stream": stream,
        "max_tokens": max_tokens,
        "stream_options": {"include_usage": include_usage},
    }


async def post(app: FastAPI, body: dict[str, Any], headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        return await client.post("/v1/chat/completions", json=body, headers=headers)


def sse_data(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.split("\n") if line.startswith("data: ")]


def points(metrics: dict[str, Metric], name: str, **attrs: str) -> list[HistogramDataPoint]:
    data_points = metrics[name].data.data_points
    return [dp for dp in data_points if all(dp.attributes.get(k) == v for k, v in attrs.items())]  # type: ignore[misc]


def only(metrics: dict[str, Metric], name: str, **attrs: str) -> HistogramDataPoint:
    found = points(metrics, name, **attrs)
    assert len(found) == 1, found
    return found[0]


def assert_no_ids_in_metrics(metrics: dict[str, Metric]) -> None:
    forbidden = {USER_ID, REQUEST_ID, UserIdHasher(KEY.encode())(USER_ID)}
    for metric in metrics.values():
        for dp in metric.data.data_points:
            assert set(dp.attributes) <= set(semconv.METRIC_ATTRIBUTES), (metric.name, dict(dp.attributes))
            assert not forbidden & set(dp.attributes.values()), (metric.name, dict(dp.attributes))


@pytest.mark.parametrize("include_usage", [False, True], ids=["counted", "usage-event"])
def test_streamed_completion_is_intact_and_recorded(captured: Captured, include_usage: bool) -> None:
    max_tokens = 12
    response = asyncio.run(post(create_app(captured.telemetry), chat(max_tokens, include_usage=include_usage), HEADERS))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    *events, done = sse_data(response.text)
    assert done == "[DONE]"
    chunks = [json.loads(data) for data in events]
    contents = [
        c["choices"][0]["delta"]["content"] for c in chunks if c["choices"] and "content" in c["choices"][0]["delta"]
    ]
    assert "".join(contents) == "".join(itertools.islice(itertools.cycle(REPLY), max_tokens))
    if include_usage:
        assert chunks[-1]["usage"] == {"prompt_tokens": 6, "completion_tokens": max_tokens, "total_tokens": 18}

    m = captured.collect()
    labels = {semconv.GEN_AI_REQUEST_MODEL: "qwen3-8b", semconv.GEN_AI_OPERATION_NAME: "chat", semconv.USER_TIER: "pro"}
    duration = only(m, semconv.REQUEST_DURATION, **labels)
    assert duration.count == 1 and semconv.ERROR_TYPE not in duration.attributes
    assert duration.attributes[semconv.GEN_AI_PROVIDER_NAME] == "tokenlat.example"
    assert only(m, semconv.TIME_TO_FIRST_TOKEN, **labels).sum > 0
    assert only(m, semconv.TOKEN_USAGE, **labels, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == len(contents)
    assert only(m, semconv.TOKEN_USAGE, **labels, **{semconv.GEN_AI_TOKEN_TYPE: "input"}).sum == 6
    assert only(m, semconv.INTER_TOKEN_LATENCY, **labels).count == len(contents) - 1
    assert_no_ids_in_metrics(m)

    assert captured.telemetry.tracer_provider is not None
    captured.telemetry.tracer_provider.force_flush()
    (span,) = captured.spans.get_finished_spans()
    attributes = dict(span.attributes or {})
    assert attributes[semconv.USER_ID_HASH] == UserIdHasher(KEY.encode())(USER_ID)
    assert USER_ID not in attributes.values()
    assert attributes[semconv.REQUEST_ID] == REQUEST_ID
    assert attributes["gen_ai.usage.output_tokens"] == max_tokens


def test_labels_only_take_known_values(captured: Captured) -> None:
    app = create_app(captured.telemetry)
    unknown_model = asyncio.run(post(app, chat(3, model="gpt-unknown"), HEADERS))
    assert unknown_model.status_code == 404
    odd_tier = asyncio.run(post(app, chat(3), {**HEADERS, "x-user-tier": "tier-of-alice@example.com"}))
    assert odd_tier.status_code == 200
    m = captured.collect()
    (duration,) = points(m, semconv.REQUEST_DURATION)  # the refused request recorded nothing
    assert duration.attributes[semconv.USER_TIER] == "other"
    assert duration.attributes[semconv.GEN_AI_REQUEST_MODEL] == "qwen3-8b"


def test_non_streamed_completion_is_recorded_too(captured: Captured) -> None:
    response = asyncio.run(post(create_app(captured.telemetry), chat(5, stream=False), HEADERS))
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "".join(REPLY[:5])
    m = captured.collect()
    assert only(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum == 5
    assert only(m, semconv.INTER_TOKEN_LATENCY).count == 4
    assert_no_ids_in_metrics(m)


def wait_until(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll ``predicate``; the timeout only bounds a failure, it asserts nothing about speed."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what} after {timeout}s")
        time.sleep(0.01)


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    """uvicorn on 127.0.0.1 and a free port, in a thread; always stopped, and its thread joined, on exit."""
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), "uvicorn to start")
        assert server.started, "uvicorn exited during startup"
        (host, port) = server.servers[0].sockets[0].getsockname()[:2]
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
    assert not thread.is_alive(), "uvicorn did not stop"


def cancelled_requests(captured: Captured) -> int:
    m = captured.collect()
    if semconv.REQUEST_DURATION not in m:
        return 0
    return sum(dp.count for dp in points(m, semconv.REQUEST_DURATION, **{semconv.ERROR_TYPE: CANCELLED}))


def test_client_disconnect_mid_stream_is_recorded_as_cancelled(captured: Captured) -> None:
    max_tokens = 100_000  # minutes of decoding: the request can only end by the client going away
    with serving(create_app(captured.telemetry)) as url, httpx.Client(base_url=url, timeout=30) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat(max_tokens), headers=HEADERS) as response:
            assert response.status_code == 200
            seen = 0
            for line in response.iter_lines():
                seen += '"content"' in line
                if seen == 3:
                    break
        # Leaving the block closed the connection with the body unread; the server notices and gives up.
        wait_until(lambda: cancelled_requests(captured) == 1, "the cancelled request to be recorded")

    m = captured.collect()
    (duration,) = points(m, semconv.REQUEST_DURATION)
    assert duration.attributes[semconv.ERROR_TYPE] == CANCELLED and duration.count == 1
    output = only(m, semconv.TOKEN_USAGE, **{semconv.GEN_AI_TOKEN_TYPE: "output"}).sum
    assert 3 <= output < max_tokens
    assert only(m, semconv.TIME_TO_FIRST_TOKEN).sum > 0
    assert_no_ids_in_metrics(m)
    assert captured.telemetry.tracer_provider is not None
    captured.telemetry.tracer_provider.force_flush()
    (span,) = captured.spans.get_finished_spans()
    assert dict(span.attributes or {})[semconv.ERROR_TYPE] == CANCELLED
