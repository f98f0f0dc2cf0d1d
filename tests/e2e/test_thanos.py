"""A real Thanos Receive + Query: remote write with a tenant header, plain and over mutual TLS, read back.

The writers are the real ones: the ocb-built Collector's prometheus_remote_write exporter, and a minimal
remote-write client (tests/remote_write.py: protobuf and snappy encoded by hand, so no extra package is needed) for
the requests whose exact shape the test must control, such as a write with no client certificate.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from tests.remote_write import remote_write, write_request
from tokenlat_cli.verify.certs import CertificateSet, make_certificates
from tokenlat_cli.verify.polling import poll, wait_until
from tokenlat_cli.verify.processes import ProcessGroup, ServiceError
from tokenlat_cli.verify.promql import PrometheusClient
from tokenlat_cli.verify.services import CollectorEndpoints, start_collector
from tokenlat_cli.verify.thanos import (
    TENANT_HEADER,
    TENANT_LABEL,
    THANOS_VERSION,
    ThanosReceive,
    find_thanos,
    start_thanos_query,
    start_thanos_receive,
)

pytestmark = pytest.mark.e2e
TENANT = "tenant-a"
READ_BACK_TIMEOUT = 30.0


@pytest.fixture
def group() -> Iterator[ProcessGroup]:
    with ProcessGroup() as g:
        yield g


def _query(url: str, promql: str) -> list[dict[str, Any]]:
    return PrometheusClient(url).query(promql)


def _read_back(url: str, promql: str, timeout: float = READ_BACK_TIMEOUT) -> list[dict[str, Any]]:
    """The series of ``promql`` once there are any (Receive and Query take a while), or none at the deadline."""
    return poll(lambda: _query(url, promql), bool, timeout)


def _start_thanos(group: ProcessGroup, workdir: Path, certs: CertificateSet | None) -> tuple[ThanosReceive, str]:
    tls = (certs.server_cert, certs.server_key, certs.ca) if certs else None
    receive = start_thanos_receive(group, workdir, tls=tls)
    return receive, start_thanos_query(group, workdir, receive.grpc_address)


# --- the tests ---


def test_remote_write_lands_in_the_tenant_and_reads_back_through_query(
    thanos_binary: Path, group: ProcessGroup, tmp_path: Path
) -> None:
    receive, query = _start_thanos(group, tmp_path, certs=None)
    assert receive.remote_write_url.startswith("http://") and receive.remote_write_url.endswith("/api/v1/receive")
    now_ms = int(time.time() * 1000)
    body = write_request("tokenlat_thanos_probe", {"job": "test"}, 42.5, now_ms)
    response = remote_write(receive.remote_write_url, body, {TENANT_HEADER: TENANT})
    assert response.status_code == 200, response.text

    result = _read_back(query, f'tokenlat_thanos_probe{{{TENANT_LABEL}="{TENANT}"}}')
    assert len(result) == 1, result
    metric, (_, value) = result[0]["metric"], result[0]["value"]
    assert metric[TENANT_LABEL] == TENANT and metric["job"] == "test"
    assert float(value) == 42.5
    # The tenant came from the header: nothing went to the default tenant.
    assert _query(query, f'tokenlat_thanos_probe{{{TENANT_LABEL}!="{TENANT}"}}') == []


def _collector_config(endpoints: CollectorEndpoints, remote_write_url: str, certs: CertificateSet) -> str:
    host, port = endpoints.telemetry.split(":")
    return f"""
extensions:
  health_check:
    endpoint: "{endpoints.health}"
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: "{endpoints.otlp_grpc}"
exporters:
  prometheus_remote_write:
    http:
      endpoint: "{remote_write_url}"
      headers:
        "{TENANT_HEADER}": "{TENANT}"
      tls:
        ca_file: "{certs.ca}"
        cert_file: "{certs.client_cert}"
        key_file: "{certs.client_key}"
    target_info:
      enabled: false
service:
  extensions: [health_check]
  telemetry:
    metrics:
      readers:
        - pull:
            exporter:
              prometheus:
                host: "{host}"
                port: {port}
  pipelines:
    metrics:
      receivers: [otlp]
      exporters: [prometheus_remote_write]
"""


def _send_otlp_counter(endpoint: str, name: str, amount: int) -> None:
    exporter = OTLPMetricExporter(endpoint=f"http://{endpoint}", insecure=True)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    provider = MeterProvider(
        resource=Resource.create({"service.name": "tokenlat-thanos-test"}), metric_readers=[reader]
    )
    try:
        provider.get_meter("tokenlat.test").create_counter(name).add(amount, {"model": "m-1"})
        assert provider.force_flush(timeout_millis=10_000)
    finally:
        provider.shutdown()


def test_collector_writes_to_receive_over_mutual_tls_with_the_tenant_header(
    thanos_binary: Path, collector_binary: Path, group: ProcessGroup, tmp_path: Path
) -> None:
    certs = make_certificates(tmp_path / "certs")
    receive, query = _start_thanos(group, tmp_path, certs)
    assert receive.remote_write_url.startswith("https://")
    endpoints = CollectorEndpoints.pick()
    start_collector(group, tmp_path, _collector_config(endpoints, receive.remote_write_url, certs), endpoints, {})

    _send_otlp_counter(endpoints.otlp_grpc, "tokenlat_thanos_collector_probe", 7)

    result = _read_back(query, f'{{__name__=~"tokenlat_thanos_collector_probe.*",{TENANT_LABEL}="{TENANT}"}}')
    assert len(result) == 1, result
    metric, (_, value) = result[0]["metric"], result[0]["value"]
    assert metric["model"] == "m-1" and metric[TENANT_LABEL] == TENANT
    assert float(value) == 7


def test_mutual_tls_refuses_a_writer_without_a_client_certificate(
    thanos_binary: Path, group: ProcessGroup, tmp_path: Path
) -> None:
    certs = make_certificates(tmp_path / "certs")
    receive, query = _start_thanos(group, tmp_path, certs)
    now_ms = int(time.time() * 1000)
    tenant = {TENANT_HEADER: TENANT}

    refused = write_request("tokenlat_thanos_refused", {}, 1.0, now_ms)
    with pytest.raises(requests.exceptions.ConnectionError):  # an SSLError, or a reset, by TLS library
        remote_write(receive.remote_write_url, refused, tenant, verify=str(certs.ca))
    # Refused in the handshake, for the missing certificate (and not, say, for an untrusted server). With TLS 1.3
    # the client can see the reset before the server has logged why, so the log is polled, not read once.
    reason = "client didn't provide a certificate"
    wait_until(
        lambda: receive.process.log_path.read_text(encoding="utf-8"),
        lambda text: reason in text,
        10.0,
        f"Thanos Receive's log to say {reason!r}",
        0.05,
    )

    # The same server takes the same kind of write from a writer with a certificate: the refusal above was
    # the missing certificate, nothing else.
    accepted = write_request("tokenlat_thanos_accepted", {}, 2.0, now_ms)
    response = remote_write(
        receive.remote_write_url,
        accepted,
        tenant,
        verify=str(certs.ca),
        cert=(str(certs.client_cert), str(certs.client_key)),
    )
    assert response.status_code == 200, response.text
    assert len(_read_back(query, f'tokenlat_thanos_accepted{{{TENANT_LABEL}="{TENANT}"}}')) == 1
    assert _query(query, "tokenlat_thanos_refused") == []


def test_find_thanos_says_how_to_build_it_when_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("THANOS_BIN", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceError, match="run `make thanos`"):
        find_thanos()
    monkeypatch.setenv("THANOS_BIN", str(tmp_path / "nope"))
    with pytest.raises(ServiceError, match=r"THANOS_BIN=.* is not an executable file"):
        find_thanos()
    installed = tmp_path / "tokenlat" / f"thanos-{THANOS_VERSION}" / "thanos"
    installed.parent.mkdir(parents=True)
    installed.write_text("#!/bin/sh\n", encoding="utf-8")
    installed.chmod(0o755)
    monkeypatch.delenv("THANOS_BIN")
    assert find_thanos() == installed
