"""Prometheus' HTTP query API, as verify reads it, and the PromQL it asks.

Prometheus, VictoriaMetrics and Thanos Query all serve the same API (instant queries, exemplars, label names and
values). Every failure raises :class:`PromQLError` naming the query or endpoint and Prometheus' own reason (its
JSON error body, not just the HTTP status), so that a failed verify says which question went wrong and why.
"""

from __future__ import annotations

from typing import Any

import requests

from tokenlat import semconv

# Every API call but the readiness probe: long enough for a query over a few thousand series on a busy machine.
QUERY_TIMEOUT = 10.0


class PromQLError(RuntimeError):
    """A query the backend refused or could not answer; ``what`` names the endpoint and the query."""

    def __init__(self, what: str, reason: str) -> None:
        super().__init__(f"{what} failed: {reason}")
        self.what = what
        self.reason = reason


class PrometheusClient:
    """Prometheus' query API (Prometheus, VictoriaMetrics and Thanos Query all serve it), with auth and TLS."""

    def __init__(self, url: str, auth: tuple[str, str] | None = None, verify: str | bool = True) -> None:
        self.url = url
        self.session = requests.Session()
        # Not the environment's proxies or CA bundle (REQUESTS_CA_BUNDLE would override ``verify``): these are
        # this run's local services and certificates.
        self.session.trust_env = False
        self.session.auth = auth
        self.session.verify = verify

    def ok(self, path: str) -> bool:
        """Whether GET ``path`` answers 200 (readiness probes)."""
        try:
            return self.session.get(f"{self.url}{path}", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    def _data(self, path: str, what: str, params: dict[str, Any] | None = None) -> Any:
        """The ``data`` of a successful API answer; otherwise PromQLError with the API's own error text."""
        try:
            response = self.session.get(f"{self.url}{path}", params=params or {}, timeout=QUERY_TIMEOUT)
        except requests.RequestException as exc:
            raise PromQLError(what, str(exc)) from exc
        try:
            payload = response.json()
        except ValueError:
            payload = None
        # A refused query comes with HTTP 400 or 422 *and* a JSON body saying why: the body is the better reason.
        if isinstance(payload, dict) and payload.get("status") == "error":
            raise PromQLError(what, f"{payload.get('errorType', 'error')}: {payload.get('error', payload)}")
        try:
            response.raise_for_status()
        except requests.RequestException as exc:
            raise PromQLError(what, str(exc)) from exc
        if not isinstance(payload, dict) or payload.get("status") != "success":
            raise PromQLError(what, f"unexpected answer {str(payload)[:200]!r}")
        return payload.get("data")

    def query(self, expr: str, **params: str) -> list[dict[str, Any]]:
        """The series of an instant query; ``params`` go along (Thanos Query's ``dedup``, a ``time``)."""
        return list(self._data("/api/v1/query", f"query {expr!r}", {"query": expr, **params})["result"])

    def scalar(self, expr: str) -> float | None:
        """The single value of an instant query, or None when it returns no series."""
        result = self.query(expr)
        if not result:
            return None
        return float(result[0]["value"][1])

    def exemplars(self, expr: str, start: float, end: float) -> list[dict[str, Any]]:
        """The exemplars of the series ``expr`` selects between ``start`` and ``end`` (unix seconds), per series:
        ``{"seriesLabels": {...}, "exemplars": [{"labels": {...}, "value": ..., "timestamp": ...}]}``."""
        params = {"query": expr, "start": start, "end": end}
        return list(self._data("/api/v1/query_exemplars", f"query_exemplars {expr!r}", params) or ())

    def label_names(self) -> list[str]:
        """Every label name of every series."""
        return list(self._data("/api/v1/labels", "label names (/api/v1/labels)"))

    def label_values(self) -> dict[str, list[str]]:
        """Every label name with all its values."""
        return {
            name: list(self._data(f"/api/v1/label/{name}/values", f"values of label {name!r}"))
            for name in self.label_names()
        }


class Queries:
    """PromQL for one histogram layout: classic (_bucket/_sum/_count series) or native (one series)."""

    def __init__(self, native: bool) -> None:
        self.native = native

    def count(self, spec: semconv.MetricSpec, matchers: str = "") -> str:
        name = semconv.prometheus_name(spec)
        selector = f"{{{matchers}}}" if matchers else ""
        return f"histogram_count(sum({name}{selector}))" if self.native else f"sum({name}_count{selector})"

    def sum(self, spec: semconv.MetricSpec, matchers: str = "") -> str:
        name = semconv.prometheus_name(spec)
        selector = f"{{{matchers}}}" if matchers else ""
        return f"histogram_sum(sum({name}{selector}))" if self.native else f"sum({name}_sum{selector})"

    def exemplar_series(self, spec: semconv.MetricSpec) -> str:
        """The series Prometheus keeps a histogram's exemplars on."""
        name = semconv.prometheus_name(spec)
        return name if self.native else f"{name}_bucket"

    def quantile(self, spec: semconv.MetricSpec, q: float) -> str:
        name = semconv.prometheus_name(spec)
        if self.native:
            return f"histogram_quantile({q}, sum({name}))"
        return f"histogram_quantile({q}, sum by (le) ({name}_bucket))"
