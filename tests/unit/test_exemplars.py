"""verify's exemplar check on hand-made answers of /api/v1/query_exemplars (the real ones: tests/e2e/test_verify.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from tokenlat import semconv
from tokenlat_cli.verify.exemplars import TraceIds, exemplar_check
from tokenlat_cli.verify.promql import PrometheusClient, Queries

LOAD = {"a" * 32, "b" * 32}


def client_answering(trace_ids: list[str]) -> tuple[PrometheusClient, list[dict[str, Any]]]:
    client = PrometheusClient("http://127.0.0.1:1")
    asked: list[dict[str, Any]] = []
    payload = {
        "status": "success",
        "data": [{"seriesLabels": {}, "exemplars": [{"labels": {"trace_id": t}, "value": "0.1"} for t in trace_ids]}],
    }

    def get(url: str, params: dict[str, Any], timeout: float) -> SimpleNamespace:
        asked.append({"url": url, **params})
        return SimpleNamespace(raise_for_status=lambda: None, json=lambda: payload)

    client.session.get = get  # type: ignore[method-assign,assignment]
    return client, asked


def test_exemplars_of_the_load_pass_and_name_the_series() -> None:
    client, asked = client_answering(["a" * 32, "b" * 32, "a" * 32])
    check = exemplar_check(client, Queries(native=False), semconv.TTFT_SPEC, LOAD, 10.0, 20.0)
    assert check.passed and check.observed == "3 of 3" and "2 distinct traces" in check.detail
    assert asked == [
        {
            "url": "http://127.0.0.1:1/api/v1/query_exemplars",
            "query": "gen_ai_server_time_to_first_token_seconds_bucket",
            "start": 10.0,
            "end": 20.0,
        }
    ]
    exemplar_check(client, Queries(native=True), semconv.TTFT_SPEC, LOAD, 10.0, 20.0)
    assert asked[-1]["query"] == "gen_ai_server_time_to_first_token_seconds"


def test_a_stranger_or_no_exemplar_fails() -> None:
    client, _ = client_answering(["a" * 32, "c" * 32])
    stranger = exemplar_check(client, Queries(native=False), semconv.TTFT_SPEC, LOAD, 0.0, 1.0)
    assert not stranger.passed and stranger.observed == "1 of 2" and "'cccc" in stranger.detail
    client, _ = client_answering([])
    none = exemplar_check(client, Queries(native=False), semconv.TTFT_SPEC, LOAD, 0.0, 1.0)
    assert not none.passed and none.detail == "no exemplars in Prometheus"


def test_trace_ids_keeps_the_hex_trace_id_of_every_span() -> None:
    exporter = TraceIds()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    with provider.get_tracer("t").start_as_current_span("request") as span:
        expected = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    assert exporter.ids == {expected}
