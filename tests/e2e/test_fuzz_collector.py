"""Fuzzing the built Collector's OTLP receiver: random bytes and mutated valid exports to OTLP/HTTP (/v1/metrics,
/v1/traces) and OTLP/gRPC, and raw noise on the gRPC port.

The receiver is the Collector's front door, open to every service that records; what a broken or hostile client
sends there must cost that client its request and nothing more. Each case must get an HTTP status (or a gRPC
status) or a closed connection, and the process must still run; after all of them the Collector is healthy and
accepts a valid export on both protocols. Its exporter points at a closed port: delivery is not what is tested.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import (
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    NumberDataPoint,
    ResourceMetrics,
    ScopeMetrics,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span

from tests.conftest import DATA
from tests.fuzzing import chunked, fuzz_settings, mutated
from tokenlat_cli.profiles import Profile, load_profile
from tokenlat_cli.render import render_collector_config
from tokenlat_cli.verify.processes import ManagedProcess, ProcessGroup, http_ok
from tokenlat_cli.verify.services import CollectorEndpoints, start_collector

TIMEOUT_S = 10.0  # a liveness bound on each request, not a timing
METRICS_METHOD = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
TRACES_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def _resource() -> Resource:
    return Resource(attributes=[KeyValue(key="service.name", value=AnyValue(string_value="fuzz"))])


METRICS = ExportMetricsServiceRequest(
    resource_metrics=[
        ResourceMetrics(
            resource=_resource(),
            scope_metrics=[
                ScopeMetrics(
                    metrics=[
                        Metric(
                            name="fuzz_gauge", gauge=Gauge(data_points=[NumberDataPoint(as_int=1, time_unix_nano=1)])
                        ),
                        Metric(
                            name="gen_ai.server.time_to_first_token",
                            unit="s",
                            histogram=Histogram(
                                aggregation_temporality=2,
                                data_points=[
                                    HistogramDataPoint(
                                        count=2, sum=0.3, bucket_counts=[1, 1], explicit_bounds=[0.1], time_unix_nano=1
                                    )
                                ],
                            ),
                        ),
                    ]
                )
            ],
        )
    ]
).SerializeToString()
TRACES = ExportTraceServiceRequest(
    resource_spans=[
        ResourceSpans(
            resource=_resource(),
            scope_spans=[
                ScopeSpans(
                    spans=[Span(trace_id=b"\x01" * 16, span_id=b"\x02" * 8, name="chat", start_time_unix_nano=1)]
                )
            ],
        )
    ]
).SerializeToString()
VALID = {"/v1/metrics": METRICS, "/v1/traces": TRACES}
PAYLOADS = st.one_of(
    st.sampled_from(list(VALID.values())).flatmap(lambda valid: mutated(valid, max_edits=6)),
    st.binary(max_size=400),
)


@dataclass
class Running:
    process: ManagedProcess
    endpoints: CollectorEndpoints

    def assert_up(self) -> None:
        assert self.process.popen.poll() is None, f"the Collector exited with {self.process.popen.returncode}"


def _pointed_here(profile: Profile, endpoints: CollectorEndpoints) -> Profile:
    """The profile with every listening address on a free local port and its exporters at a closed one."""
    data = profile.data
    # Give up on the closed port fast, so that the Collector's shutdown does not wait out the default retries.
    data["backend"].update(
        endpoint="http://127.0.0.1:1/api/v1/write", timeout="1s", retry_max_elapsed="1s", retry_max_interval="1s"
    )
    data["traces"].update(endpoint="127.0.0.1:1", insecure=True, decision_wait="1s")
    data["receiver"].update(grpc_endpoint=endpoints.otlp_grpc, http_endpoint=endpoints.otlp_http)
    data["service"]["health_endpoint"] = endpoints.health
    host, port = endpoints.telemetry.rsplit(":", 1)
    data["service"].update(telemetry_host=host, telemetry_port=int(port))
    return profile


@pytest.fixture(scope="module")
def collector(collector_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    workdir = tmp_path_factory.mktemp("fuzz-collector")
    endpoints = CollectorEndpoints.pick()
    profile = _pointed_here(load_profile(str(DATA / "traces.yaml")), endpoints)  # metrics and traces pipelines
    assert profile.data["traces"]["enabled"] and not profile.data["receiver"]["tls"]["enabled"]
    env = {profile.data["deidentification"]["salt_env"]: "fuzz-salt"}
    with ProcessGroup() as group:
        started = start_collector(group, workdir, render_collector_config(profile), endpoints, env=env)
        yield Running(started.process, endpoints)


@pytest.fixture(scope="module")
def session() -> Iterator[requests.Session]:
    with requests.Session() as s:
        s.trust_env = False  # never through the environment's proxies
        yield s


@pytest.fixture(scope="module")
def channel(collector: Running) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(collector.endpoints.otlp_grpc) as ch:
        yield ch


def post(session: requests.Session, url: str, body: bytes, content_type: str, encoding: str | None) -> int | None:
    """POST ``body``; the status, or None when the Collector closed the connection without one."""
    headers = {"Content-Type": content_type, **({"Content-Encoding": encoding} if encoding else {})}
    try:
        return session.post(url, data=body, headers=headers, timeout=TIMEOUT_S).status_code
    except requests.ConnectionError:
        return None


def export(channel: grpc.Channel, method: str, body: bytes) -> grpc.StatusCode:
    """Call ``method`` with ``body`` as the serialized request; the gRPC status."""
    call = channel.unary_unary(method)  # no serializers: the bytes go as they are
    try:
        call(body, timeout=TIMEOUT_S)
    except grpc.RpcError as exc:
        return exc.code()  # type: ignore[no-any-return]
    return grpc.StatusCode.OK


def test_malformed_otlp_leaves_the_collector_up_and_accepting(
    collector: Running, session: requests.Session, channel: grpc.Channel
) -> None:
    http = f"http://{collector.endpoints.otlp_http}"

    @fuzz_settings()
    @given(
        path=st.sampled_from([*VALID, "/v1/logs", "/v1/metrics/x"]),
        body=PAYLOADS,
        content_type=st.sampled_from(["application/x-protobuf", "application/json", "text/plain", ""]),
        encoding=st.none() | st.sampled_from(["gzip", "zstd", "deflate", "snappy", "x"]),
        method=st.sampled_from([METRICS_METHOD, TRACES_METHOD]),
        raw=st.binary(max_size=200).flatmap(chunked),
    )
    def one(path: str, body: bytes, content_type: str, encoding: str | None, method: str, raw: list[bytes]) -> None:
        status = post(session, http + path, body, content_type, encoding)
        assert status is None or 200 <= status < 600
        assert isinstance(export(channel, method, body), grpc.StatusCode)
        host, port = collector.endpoints.otlp_grpc.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=TIMEOUT_S) as sock, contextlib.suppress(OSError):
            for piece in raw:  # noise where an HTTP/2 preface should be
                sock.sendall(piece)
        collector.assert_up()

    one()
    collector.assert_up()
    assert http_ok(f"http://{collector.endpoints.health}"), "the Collector's health check fails"
    for path, body in VALID.items():
        assert post(session, http + path, body, "application/x-protobuf", None) == 200, path
    assert export(channel, METRICS_METHOD, METRICS) == grpc.StatusCode.OK
    assert export(channel, TRACES_METHOD, TRACES) == grpc.StatusCode.OK
