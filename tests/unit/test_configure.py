"""tokenlat.configure: settings from arguments and OpenTelemetry-style environment variables."""

from __future__ import annotations

import uuid

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcMetricExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpMetricExporter
from opentelemetry.sdk.metrics import Counter, Histogram, ObservableCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, ExponentialHistogramDataPoint, HistogramDataPoint
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.otel_helpers import MODEL, CapturingExporter
from tokenlat import semconv
from tokenlat.configure import ConfigurationError, Telemetry, _with_instance_id, configure, parse_attributes
from tokenlat.histograms import DEFAULT_MAX_ATTRIBUTE_SETS, TokenlatMetricExporter
from tokenlat.recorder import ATTRIBUTE_OVERFLOW, DROPPED_ATTRIBUTES, TRUNCATED_ATTRIBUTES


def _inner_exporter(telemetry: Telemetry) -> object:
    """The OTLP exporter configure() chose; swapped for a local one so shutdown does not wait on a network."""
    (reader,) = telemetry.meter_provider._metric_readers  # type: ignore[attr-defined]
    exporter = reader._exporter
    assert isinstance(exporter, TokenlatMetricExporter)
    chosen = exporter.inner
    exporter.inner = CapturingExporter()
    return chosen


def test_defaults_build_a_grpc_exporter_and_no_spans() -> None:
    telemetry = configure(environ={})
    try:
        assert isinstance(_inner_exporter(telemetry), GrpcMetricExporter)
        assert telemetry.tracer_provider is None and telemetry.metrics.tracer is None
        assert telemetry.metrics.hasher is None
    finally:
        telemetry.shutdown()


def test_environment_selects_http_spans_attributes_and_hashing() -> None:
    environ = {
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "TOKENLAT_SPANS": "true",
        "TOKENLAT_ATTRIBUTES": "tokenlat.gpu.type=H100, tokenlat.quantization=fp8",
        "TOKENLAT_USER_ID_KEY": "secret-key",
        "TOKENLAT_USER_ID_HASH": "sm3",
    }
    telemetry = configure(environ=environ, endpoint="http://127.0.0.1:4318")
    try:
        inner = _inner_exporter(telemetry)
        assert isinstance(inner, HttpMetricExporter)
        assert inner._endpoint == "http://127.0.0.1:4318/v1/metrics"  # type: ignore[attr-defined]
        assert telemetry.tracer_provider is not None
        assert telemetry.metrics.attributes == {semconv.GPU_TYPE: "H100", semconv.QUANTIZATION: "fp8"}
        assert telemetry.metrics.hasher is not None and telemetry.metrics.hasher.algorithm == "sm3"
    finally:
        telemetry.shutdown()


def test_arguments_win_over_the_environment() -> None:
    telemetry = configure(
        environ={"TOKENLAT_SPANS": "true", "TOKENLAT_ATTRIBUTES": "tokenlat.scene=chat"},
        spans=False,
        attributes={semconv.SCENE: "code"},
        protocol="grpc",
    )
    try:
        _inner_exporter(telemetry)
        assert telemetry.tracer_provider is None
        assert telemetry.metrics.attributes == {semconv.SCENE: "code"}
    finally:
        telemetry.shutdown()


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "thrift"}, "OTEL_EXPORTER_OTLP_PROTOCOL: must be one of grpc, http/protobuf"),
        (
            {"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL": "thrift"},
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL: must be one of grpc, http/protobuf",
        ),
        ({"TOKENLAT_HISTOGRAM": "linear"}, "TOKENLAT_HISTOGRAM: must be one of explicit, exponential, got 'linear'"),
        ({"TOKENLAT_SPANS": "maybe"}, "TOKENLAT_SPANS: must be true or false, got 'maybe'"),
        ({"TOKENLAT_ATTRIBUTES": "a=1,b"}, "TOKENLAT_ATTRIBUTES: 'b' is not key=value"),
        ({"TOKENLAT_USER_ID_KEY": "k", "TOKENLAT_USER_ID_HASH": "md5"}, "TOKENLAT_USER_ID_HASH: must be one of"),
        (
            {"TOKENLAT_MAX_ATTRIBUTE_SETS": "0"},
            "TOKENLAT_MAX_ATTRIBUTE_SETS: must be a whole number of at least 1 .* got '0'",
        ),
        ({"TOKENLAT_MAX_ATTRIBUTE_SETS": "lots"}, "TOKENLAT_MAX_ATTRIBUTE_SETS: must be a whole number .* got 'lots'"),
        ({"TOKENLAT_MAX_ATTRIBUTE_SETS": "2e3"}, "TOKENLAT_MAX_ATTRIBUTE_SETS: must be a whole number .* got '2e3'"),
    ],
)
def test_bad_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message.replace("(", r"\(")):
        configure(environ=environ)


def test_max_attribute_sets_from_the_environment_or_the_argument() -> None:
    def cap(environ: dict[str, str], **arguments: int) -> int:
        telemetry = configure(environ=environ, metric_exporter=CapturingExporter(), **arguments)  # type: ignore[arg-type]
        telemetry.shutdown()
        return telemetry.metrics.store.max_attribute_sets

    assert cap({}) == DEFAULT_MAX_ATTRIBUTE_SETS == 2000
    assert cap({"TOKENLAT_MAX_ATTRIBUTE_SETS": " 5000 "}) == 5000
    assert cap({"TOKENLAT_MAX_ATTRIBUTE_SETS": "5000"}, max_attribute_sets=300) == 300  # the argument wins
    with pytest.raises(ConfigurationError, match=r"^max_attribute_sets: must be a whole number .* got -3$"):
        configure(environ={"TOKENLAT_MAX_ATTRIBUTE_SETS": "10"}, max_attribute_sets=-3)


def test_parse_attributes() -> None:
    assert parse_attributes(" a=1 ,b = x=y,, ") == {"a": "1", "b": "x=y"}


def test_globals_are_left_alone_unless_asked() -> None:
    before = otel_metrics.get_meter_provider()
    telemetry = configure(environ={}, metric_exporter=CapturingExporter())
    try:
        assert otel_metrics.get_meter_provider() is before
    finally:
        telemetry.shutdown()


def _export(histogram: str) -> dict[str, object]:
    capture = CapturingExporter()
    telemetry = configure(
        environ={}, histogram=histogram, metric_exporter=capture, span_exporter=InMemorySpanExporter(), spans=True
    )
    rec = telemetry.metrics.request(MODEL)
    rec.tokens()
    rec.tokens()
    rec.finish()
    telemetry.meter_provider.force_flush()
    telemetry.shutdown()
    names = {spec.name for spec in semconv.ALL_METRICS}
    exported = capture.metrics()
    assert set(exported) == {*names, DROPPED_ATTRIBUTES, TRUNCATED_ATTRIBUTES, ATTRIBUTE_OVERFLOW}
    return {name: exported[name].data.data_points[0] for name in names}


def test_explicit_histograms_by_default() -> None:
    points = _export("explicit")
    assert all(isinstance(p, HistogramDataPoint) for p in points.values())


def test_exponential_histograms_for_native_prometheus_histograms() -> None:
    points = _export("exponential")
    assert all(isinstance(p, ExponentialHistogramDataPoint) for p in points.values())


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
def test_counters_stay_cumulative_when_the_environment_prefers_delta(
    protocol: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The OTLP exporters read this from os.environ themselves; remote write would drop delta sums.
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE", "delta")
    telemetry = configure(environ={"OTEL_EXPORTER_OTLP_PROTOCOL": protocol})
    try:
        chosen = _inner_exporter(telemetry)
        preferred = chosen._preferred_temporality  # type: ignore[attr-defined]
        assert preferred[ObservableCounter] == preferred[Counter] == AggregationTemporality.CUMULATIVE
        assert preferred[Histogram] == AggregationTemporality.DELTA  # the environment did apply elsewhere
    finally:
        telemetry.shutdown()


def _resource_attributes(telemetry: Telemetry) -> dict[str, object]:
    return dict(telemetry.meter_provider._sdk_config.resource.attributes)  # type: ignore[attr-defined]


def test_every_process_has_a_service_instance_id_and_a_given_one_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replicas of one service must not send the same series: configure() always yields a service.instance.id (a
    random UUID, one per process), and keeps one given in the arguments or in OTEL_RESOURCE_ATTRIBUTES."""
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    default = configure(metric_exporter=CapturingExporter(), resource_attributes={"service.name": "svc"}, environ={})
    given = configure(
        metric_exporter=CapturingExporter(),
        resource_attributes={"service.name": "svc", "service.instance.id": "pod-7"},
        environ={},
    )
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "service.instance.id=from-env")
    from_env = configure(metric_exporter=CapturingExporter(), environ={})
    try:
        ids = [_resource_attributes(t)["service.instance.id"] for t in (default, given, from_env)]
        assert isinstance(ids[0], str) and str(uuid.UUID(ids[0])) == ids[0]
        assert ids[1:] == ["pod-7", "from-env"]
        assert _resource_attributes(default)["service.name"] == "svc"
    finally:
        for telemetry in (default, given, from_env):
            telemetry.shutdown()


def test_an_instance_id_is_added_where_the_sdk_sets_none() -> None:
    """Older SDK releases (which pyproject allows) detect no service.instance.id: configure adds one."""
    bare = Resource({"service.name": "svc"})
    added = _with_instance_id(bare).attributes
    assert added["service.name"] == "svc" and uuid.UUID(str(added["service.instance.id"]))
    kept = Resource({"service.instance.id": "pod-7"})
    assert _with_instance_id(kept).attributes["service.instance.id"] == "pod-7"
