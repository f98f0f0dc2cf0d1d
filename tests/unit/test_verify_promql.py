"""verify's Prometheus API client on hand-made answers: what it asks, what it returns, and errors that name the
query and Prometheus' own reason (the real answers: tests/e2e/test_verify.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
import requests

from tokenlat import semconv
from tokenlat_cli.verify.promql import PrometheusClient, PromQLError, Queries


def client_answering(answers: dict[str, Any], status: int = 200) -> tuple[PrometheusClient, list[str]]:
    """A client whose session answers each API path with the JSON given for it."""
    client = PrometheusClient("http://127.0.0.1:1")
    asked: list[str] = []

    def get(url: str, params: dict[str, Any], timeout: float) -> SimpleNamespace:
        path = url.removeprefix(client.url)
        asked.append(path + "".join(f" {k}={v}" for k, v in params.items()))

        def raise_for_status() -> None:
            if status >= 400:
                raise requests.HTTPError(f"{status} Client Error for url: {url}")

        return SimpleNamespace(raise_for_status=raise_for_status, json=lambda: answers[path])

    client.session.get = get  # type: ignore[method-assign,assignment]
    return client, asked


def test_scalar_and_labels() -> None:
    client, asked = client_answering(
        {
            "/api/v1/query": {"status": "success", "data": {"resultType": "vector", "result": [{"value": [1, "42"]}]}},
            "/api/v1/labels": {"status": "success", "data": ["__name__", "job"]},
            "/api/v1/label/__name__/values": {"status": "success", "data": ["up"]},
            "/api/v1/label/job/values": {"status": "success", "data": ["a", "b"]},
        }
    )
    assert client.scalar("sum(up)") == 42.0
    assert client.label_values() == {"__name__": ["up"], "job": ["a", "b"]}
    assert asked[0] == "/api/v1/query query=sum(up)"


def test_no_series_is_none() -> None:
    client, _ = client_answering({"/api/v1/query": {"status": "success", "data": {"result": []}}})
    assert client.scalar("absent") is None


def test_a_refused_query_names_the_query_and_prometheus_reason() -> None:
    body = {"status": "error", "errorType": "bad_data", "error": 'parse error: unexpected "}"'}
    client, _ = client_answering({"/api/v1/query": body}, status=400)
    with pytest.raises(PromQLError) as excinfo:
        client.scalar("sum(up}")
    assert str(excinfo.value) == "query 'sum(up}' failed: bad_data: parse error: unexpected \"}\""
    assert excinfo.value.what == "query 'sum(up}'"


def test_an_http_error_without_a_json_body_names_the_endpoint() -> None:
    def no_json() -> Any:
        raise ValueError("not JSON")

    client, _ = client_answering({}, status=503)
    client_get = client.session.get

    def get(url: str, params: dict[str, Any], timeout: float) -> SimpleNamespace:
        response = client_get(url, params, timeout)
        response.json = no_json
        return response

    client.session.get = get  # type: ignore[method-assign,assignment]
    with pytest.raises(PromQLError, match=r"^label names \(/api/v1/labels\) failed: 503 Client Error"):
        client.label_names()


def test_an_unreachable_backend_names_the_query() -> None:
    client = PrometheusClient("http://127.0.0.1:1")  # nothing listens on port 1
    with pytest.raises(PromQLError, match=r"^query_exemplars 'x' failed: "):
        client.exemplars("x", 0.0, 1.0)


def test_queries_for_classic_and_native_histograms() -> None:
    classic, native = Queries(native=False), Queries(native=True)
    ttft = semconv.TTFT_SPEC
    assert classic.count(ttft) == "sum(gen_ai_server_time_to_first_token_seconds_count)"
    assert native.count(ttft) == "histogram_count(sum(gen_ai_server_time_to_first_token_seconds))"
    assert classic.sum(semconv.TOKEN_USAGE_SPEC, 'a="b"') == 'sum(gen_ai_client_token_usage_sum{a="b"})'
    assert native.sum(semconv.TOKEN_USAGE_SPEC) == "histogram_sum(sum(gen_ai_client_token_usage))"
    assert classic.quantile(ttft, 0.9) == (
        "histogram_quantile(0.9, sum by (le) (gen_ai_server_time_to_first_token_seconds_bucket))"
    )
    assert native.quantile(ttft, 0.9) == "histogram_quantile(0.9, sum(gen_ai_server_time_to_first_token_seconds))"
