"""Setup in one call: MeterProvider (and TracerProvider), OTLP exporters, cumulative temporality.

    telemetry = tokenlat.configure(attributes={"tokenlat.gpu.type": "H100"})
    metrics = telemetry.metrics   # a TokenMetrics; use it for every request
    ...
    telemetry.shutdown()          # flushes the last export

Configuration follows OpenTelemetry's environment variables, which the OTLP exporters and the SDK read
themselves from os.environ (OTEL_EXPORTER_OTLP_ENDPOINT, _PROTOCOL, _HEADERS, _CERTIFICATE, _CLIENT_CERTIFICATE,
_CLIENT_KEY, _INSECURE, OTEL_METRIC_EXPORT_INTERVAL, OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES), plus tokenlat's own:

    TOKENLAT_ATTRIBUTES     process-wide metric attributes, "tokenlat.gpu.type=H100,tokenlat.quantization=fp8"
    TOKENLAT_SPANS          "true": one span per request (exemplars then carry its trace id)
    TOKENLAT_HISTOGRAM      "explicit" (default) or "exponential" (Prometheus native histograms)
    TOKENLAT_BUCKETS        explicit boundaries: "geometric[:TARGET]" (default 5%, with ranges and thresholds)
                            or "semconv"; the grammar is in tokenlat.buckets. Render prints a profile's.
    TOKENLAT_USER_ID_KEY    key of the keyed hash of user ids (unset: user ids are dropped)
    TOKENLAT_USER_ID_HASH   "sha256" (default) or "sm3"
    TOKENLAT_MAX_ATTRIBUTE_SETS
                            each histogram's cap on distinct attribute sets (default 2000, the SDK's cardinality
                            limit); beyond it, one overflow set otel.metric.overflow=true (docs/metrics.md)

Arguments win over the environment. It coexists with an application's own OpenTelemetry setup: it builds its
own providers and leaves the global ones alone unless ``set_global=True``.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import Counter, MeterProvider, ObservableCounter
from opentelemetry.sdk.metrics.export import AggregationTemporality, MetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.util.types import AttributeValue

from tokenlat.buckets import BucketLayout
from tokenlat.histograms import (
    DEFAULT_MAX_ATTRIBUTE_SETS,
    EXPONENTIAL_SCALE,
    MAX_ATTRIBUTE_SETS_ENV,
    TokenlatMetricExporter,
    check_max_attribute_sets,
)
from tokenlat.privacy import UserIdHasher
from tokenlat.recorder import TokenMetrics

PROTOCOLS = ("grpc", "http/protobuf")
HISTOGRAMS = ("explicit", "exponential")


class ConfigurationError(ValueError):
    """A setting that cannot work: names the argument or environment variable and the reason."""


@dataclass
class Telemetry:
    """What configure() built; ``metrics`` records requests, ``shutdown`` flushes and stops the exporters."""

    metrics: TokenMetrics
    meter_provider: MeterProvider
    tracer_provider: TracerProvider | None

    def shutdown(self) -> None:
        self.meter_provider.shutdown()
        if self.tracer_provider is not None:
            self.tracer_provider.shutdown()


def _env(name: str, environ: Mapping[str, str]) -> str | None:
    value = environ.get(name, "").strip()
    return value or None


def _choice(value: str | None, name: str, choices: tuple[str, ...], default: str) -> str:
    value = (value or default).lower()
    if value not in choices:
        raise ConfigurationError(f"{name}: must be one of {', '.join(choices)}, got {value!r}")
    return value


def _layout(spec: str | None, environ: Mapping[str, str]) -> BucketLayout:
    name = "buckets" if spec else "TOKENLAT_BUCKETS"
    spec = spec or _env("TOKENLAT_BUCKETS", environ)
    if spec is None:
        return BucketLayout()
    try:
        return BucketLayout.parse(spec)
    except ValueError as exc:
        raise ConfigurationError(f"{name}: {exc}") from None


def _bool(value: str | None, name: str) -> bool:
    if value is None:
        return False
    lowered = value.lower()
    if lowered not in ("true", "false", "1", "0", "yes", "no"):
        raise ConfigurationError(f"{name}: must be true or false, got {value!r}")
    return lowered in ("true", "1", "yes")


def _max_attribute_sets(argument: int | None, environ: Mapping[str, str]) -> int:
    """The argument if given, else TOKENLAT_MAX_ATTRIBUTE_SETS, else the default; the error names which was bad."""
    if argument is not None:
        try:
            return check_max_attribute_sets(argument)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from None
    text = _env(MAX_ATTRIBUTE_SETS_ENV, environ)
    if text is None:
        return DEFAULT_MAX_ATTRIBUTE_SETS
    try:
        return check_max_attribute_sets(int(text), MAX_ATTRIBUTE_SETS_ENV)
    except ValueError:  # not a whole number, or below 1: the message shows the text as it was given
        raise ConfigurationError(
            f"{MAX_ATTRIBUTE_SETS_ENV}: must be a whole number of at least 1 (distinct attribute sets per metric), "
            f"got {text!r}"
        ) from None


def parse_attributes(text: str, name: str = "TOKENLAT_ATTRIBUTES") -> dict[str, AttributeValue]:
    """``k=v,k=v`` (OTEL_RESOURCE_ATTRIBUTES' format) into a dict."""
    attributes: dict[str, AttributeValue] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigurationError(f"{name}: {item!r} is not key=value")
        attributes[key.strip()] = value.strip()
    return attributes


def _signal_endpoint(protocol: str, endpoint: str | None, signal: str) -> str | None:
    """``endpoint`` is the base address, as OTEL_EXPORTER_OTLP_ENDPOINT is: OTLP/HTTP adds the signal's path."""
    if endpoint is None or protocol == "grpc":
        return endpoint
    return endpoint.rstrip("/") + f"/v1/{signal}"


@dataclass(frozen=True)
class TLSFiles:
    """PEM files for OTLP over TLS: the CA that signed the Collector's certificate and, for mutual TLS, this
    client's certificate and key. Unset fields fall back to OTEL_EXPORTER_OTLP_CERTIFICATE and friends."""

    ca_file: str | None = None
    client_certificate_file: str | None = None
    client_key_file: str | None = None

    def grpc_options(self) -> dict[str, object]:
        if not any((self.ca_file, self.client_certificate_file, self.client_key_file)):
            return {}
        import grpc

        def read(path: str | None) -> bytes | None:
            return None if path is None else Path(path).read_bytes()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file),
            private_key=read(self.client_key_file),
            certificate_chain=read(self.client_certificate_file),
        )
        return {"credentials": credentials, "insecure": False}

    def http_options(self) -> dict[str, object]:
        return {
            "certificate_file": self.ca_file,
            "client_certificate_file": self.client_certificate_file,
            "client_key_file": self.client_key_file,
        }


def _metric_exporter(protocol: str, endpoint: str | None, tls: TLSFiles) -> MetricExporter:
    # The SDK's own instruments here are counters (TokenMetrics.count); tokenlat's histograms are cumulative by
    # construction (histograms.MetricStore). Counters stay cumulative too, whatever
    # OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE says: Prometheus remote write drops delta sums.
    temporality = {kind: AggregationTemporality.CUMULATIVE for kind in (Counter, ObservableCounter)}
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, preferred_temporality=temporality, **tls.grpc_options())  # type: ignore[arg-type]
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

    return HttpExporter(
        endpoint=_signal_endpoint(protocol, endpoint, "metrics"),
        preferred_temporality=temporality,
        **tls.http_options(),
    )  # type: ignore[arg-type]


def _span_exporter(protocol: str, endpoint: str | None, tls: TLSFiles) -> SpanExporter:
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter

        return GrpcExporter(endpoint=endpoint, **tls.grpc_options())  # type: ignore[arg-type]
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter

    return HttpExporter(endpoint=_signal_endpoint(protocol, endpoint, "traces"), **tls.http_options())  # type: ignore[arg-type]


def _with_instance_id(resource: Resource) -> Resource:
    """The resource with a service.instance.id: a random one unless the caller, OTEL_RESOURCE_ATTRIBUTES or the SDK
    set it (the SDK 1.45 sets one per process; older releases that pyproject allows set none).

    Without it, every replica of a service sends the same series (remote write makes the resource's service.name
    the job label and service.instance.id the instance label): their cumulative counts would overwrite each other
    in the backend, and two gateways of the two-tier layout could write one series at once. The semantic
    conventions recommend a random UUID where nothing else identifies the instance; it changes at each start,
    which costs a new set of series per restart, as a counter reset would anyway.
    """
    if SERVICE_INSTANCE_ID in resource.attributes:
        return resource
    return resource.merge(Resource({SERVICE_INSTANCE_ID: str(uuid.uuid4())}))


def configure(
    *,
    endpoint: str | None = None,
    protocol: str | None = None,
    attributes: Mapping[str, AttributeValue] | None = None,
    spans: bool | None = None,
    histogram: str | None = None,
    exponential_scale: int = EXPONENTIAL_SCALE,
    buckets: BucketLayout | str | None = None,
    max_attribute_sets: int | None = None,
    resource_attributes: Mapping[str, AttributeValue] | None = None,
    export_interval_millis: float | None = None,
    tls: TLSFiles | None = None,
    metric_exporter: MetricExporter | None = None,
    span_exporter: SpanExporter | None = None,
    set_global: bool = False,
    environ: Mapping[str, str] | None = None,
) -> Telemetry:
    """Build the providers and a TokenMetrics. ``tls`` sets the OTLP exporters' CA and client certificate (mutual
    TLS); ``metric_exporter``/``span_exporter`` replace the OTLP exporters altogether. ``buckets``: the explicit
    bucket layout, or its spec (TOKENLAT_BUCKETS). ``max_attribute_sets``: each histogram's cap on distinct attribute
    sets (TOKENLAT_MAX_ATTRIBUTE_SETS; default 2000, as the SDK's cardinality limit)."""
    env = os.environ if environ is None else environ
    # The error names the variable the bad value came from (the metrics-specific one wins, as in the SDK).
    protocol_source = next(
        (name for name in ("OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL") if _env(name, env)),
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    )
    protocol = _choice(
        protocol or _env(protocol_source, env), "protocol" if protocol else protocol_source, PROTOCOLS, "grpc"
    )
    histogram = _choice(histogram or _env("TOKENLAT_HISTOGRAM", env), "TOKENLAT_HISTOGRAM", HISTOGRAMS, "explicit")
    layout = buckets if isinstance(buckets, BucketLayout) else _layout(buckets, env)
    max_sets = _max_attribute_sets(max_attribute_sets, env)
    want_spans = spans if spans is not None else _bool(_env("TOKENLAT_SPANS", env), "TOKENLAT_SPANS")
    process_attributes = {**parse_attributes(_env("TOKENLAT_ATTRIBUTES", env) or ""), **(attributes or {})}
    try:
        hasher = UserIdHasher.from_env(env)
    except ValueError as exc:
        raise ConfigurationError(str(exc)) from None

    resource = _with_instance_id(Resource.create(dict(resource_attributes or {})))
    tls = tls or TLSFiles()
    exporter = TokenlatMetricExporter(metric_exporter or _metric_exporter(protocol, endpoint, tls))
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=export_interval_millis)
    meter_provider = MeterProvider(metric_readers=[reader], resource=resource)

    tracer_provider: TracerProvider | None = None
    if want_spans:
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter or _span_exporter(protocol, endpoint, tls)))
    if set_global:
        otel_metrics.set_meter_provider(meter_provider)
        if tracer_provider is not None:
            trace.set_tracer_provider(tracer_provider)

    token_metrics = TokenMetrics(
        meter_provider,
        tracer_provider=tracer_provider,
        spans=want_spans,
        attributes=process_attributes,
        user_id_hasher=hasher,
        exponential=histogram == "exponential",
        exponential_scale=exponential_scale,
        buckets=layout,
        max_attribute_sets=max_sets,
    )
    return Telemetry(token_metrics, meter_provider, tracer_provider)
