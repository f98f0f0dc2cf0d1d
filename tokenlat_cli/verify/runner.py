"""verify, stage by stage: real Prometheus, real Collector, synthetic model, real instrumentation; then compare.

Like the Collector's own testbed: count what was sent, count what arrived, compare; then compare quantiles with
the truth. Every process started here is stopped however the run ends (failure, Ctrl-C, SIGTERM).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import requests

from tokenlat import semconv
from tokenlat.configure import Telemetry, TLSFiles, configure
from tokenlat.recorder import TokenMetrics
from tokenlat.synthetic import DEFAULT_MODEL
from tokenlat_cli.collector import validate_config
from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import render_collector_config
from tokenlat_cli.verify import checks
from tokenlat_cli.verify.certs import make_certificates
from tokenlat_cli.verify.load import LoadResult, run_load
from tokenlat_cli.verify.probes import otlp_export_accepted
from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.report import Report
from tokenlat_cli.verify.services import (
    CollectorEndpoints,
    Prometheus,
    start_collector,
    start_prometheus,
    start_sidecar,
    start_synthetic,
)

Echo = Callable[[str], None]


@dataclass(frozen=True)
class VerifySettings:
    requests: int = 300
    concurrency: int = 100
    seed: int = 0
    ttft: str = "lognormal:0.12,0.35"
    inter_token: str = "lognormal:0.012,0.3"
    output_tokens: str = "16-48"
    #: How long to wait for the data to arrive in Prometheus after the flush.
    deadline: float = 60.0
    #: "explicit" (classic Prometheus histograms) or "exponential" (native histograms).
    histogram: str = "explicit"
    #: Send the traffic through `tokenlat sidecar`, which then does the measuring, instead of the library.
    via_sidecar: bool = False
    export_interval: float = 1.0


class UnsupportedProfile(ValueError):
    """A profile whose backend verify cannot stand up locally yet."""


def check_supported(profile: Profile) -> None:
    """Fail before starting anything when the profile needs what verify cannot stand up locally yet."""
    unsupported = [
        reason
        for reason, present in (
            ("backend auth", profile.data["backend"]["auth"]["kind"] != "none"),
            ("a traces pipeline", profile.data["traces"]["enabled"]),
        )
        if present
    ]
    if unsupported:
        raise UnsupportedProfile(
            f"{profile.source}: verify cannot yet stand up {', '.join(unsupported)} locally; "
            "use a profile without them (e.g. --profile local)"
        )


@dataclass(frozen=True)
class LocalDeployment:
    """The profile pointed at this run's services, and how a legitimate client reaches its receiver."""

    profile: Profile
    otlp_endpoint: str
    client_tls: TLSFiles | None
    mutual_tls: bool


def local_deployment(
    profile: Profile, prometheus: Prometheus, endpoints: CollectorEndpoints, workdir: Path
) -> LocalDeployment:
    """The same profile and pipeline, with every address pointed at this run's local services and free ports, and
    the receiver's TLS files (when it has TLS) replaced by certificates made for this run."""
    check_supported(profile)
    data = copy.deepcopy(profile.data)
    data["backend"]["endpoint"] = prometheus.remote_write_url
    data["receiver"]["grpc_endpoint"] = endpoints.otlp_grpc
    data["receiver"]["http_endpoint"] = endpoints.otlp_http
    data["service"]["health_endpoint"] = endpoints.health
    host, port = endpoints.telemetry.rsplit(":", 1)
    data["service"]["telemetry_host"] = host
    data["service"]["telemetry_port"] = int(port)
    tls = data["receiver"]["tls"]
    if not tls["enabled"]:
        return LocalDeployment(
            Profile(profile.name, profile.source, data), f"http://{endpoints.otlp_grpc}", None, False
        )
    certs = make_certificates(workdir / "certs")
    mutual = bool(tls["client_ca_file"])
    tls.update(cert_file=str(certs.server_cert), key_file=str(certs.server_key))
    if mutual:
        tls["client_ca_file"] = str(certs.ca)
    client = TLSFiles(
        ca_file=str(certs.ca),
        client_certificate_file=str(certs.client_cert) if mutual else None,
        client_key_file=str(certs.client_key) if mutual else None,
    )
    return LocalDeployment(
        Profile(profile.name, profile.source, data), f"https://{endpoints.otlp_grpc}", client, mutual
    )


def _telemetry(deployment: LocalDeployment, interval: float, histogram: str) -> Telemetry:
    """The library's own setup, as a service would call it; nothing from this process's environment leaks in."""
    return configure(
        endpoint=deployment.otlp_endpoint,
        tls=deployment.client_tls,
        protocol="grpc",
        resource_attributes={"service.name": "tokenlat-verify"},
        export_interval_millis=interval * 1000,
        histogram=histogram,
        environ={},
    )


def _exporter_failures(telemetry_url: str) -> float:
    """Data points the Collector's exporters failed to send, from its own metrics."""
    text = requests.get(telemetry_url, timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("otelcol_exporter_send_failed_metric_points")
    )


class Stages:
    """Numbered progress lines on stderr, with the time each stage took."""

    def __init__(self, echo: Echo, total: int) -> None:
        self.echo = echo
        self.total = total
        self.number = 0

    def begin(self, text: str) -> float:
        self.number += 1
        self.echo(f"[{self.number}/{self.total}] {text}")
        return time.monotonic()

    def end(self, started: float, detail: str = "") -> None:
        self.echo(f"      done in {time.monotonic() - started:.1f}s{(': ' + detail) if detail else ''}")


def run_verify(profile: Profile, settings: VerifySettings, workdir: Path, echo: Echo) -> Report:
    stages = Stages(echo, 7)
    report = Report(profile=profile.name, settings=asdict(settings))
    with ProcessGroup() as group:
        started = stages.begin("starting Prometheus (remote-write receiver on)")
        prometheus = start_prometheus(group, workdir)
        stages.end(started, prometheus.url)

        started = stages.begin(f"rendering profile {profile.name} for local services and validating it")
        endpoints = CollectorEndpoints.pick()
        deployment = local_deployment(profile, prometheus, endpoints, workdir)
        config = render_collector_config(deployment.profile)
        validate_config(config)
        stages.end(started, str(workdir / "collector.yaml"))

        started = stages.begin("starting the tokenlat Collector")
        collector = start_collector(group, workdir, config, endpoints, env={})
        stages.end(
            started, f"OTLP gRPC on {deployment.otlp_endpoint}{' (mutual TLS)' if deployment.mutual_tls else ''}"
        )

        started = stages.begin(
            "starting the synthetic model server" + (" and the tokenlat sidecar" if settings.via_sidecar else "")
        )
        synthetic_args = [
            f"--seed={settings.seed}",
            f"--ttft={settings.ttft}",
            f"--inter-token={settings.inter_token}",
            f"--output-tokens={settings.output_tokens}",
        ]
        server = start_synthetic(group, workdir, synthetic_args)
        stages.end(started, server.url)

        load = _run_traffic(group, workdir, server.url, deployment, settings, stages, echo)

        started = stages.begin(f"waiting for the data in Prometheus (up to {settings.deadline:.0f}s)")
        client = checks.PrometheusClient(prometheus.url)
        _compare(report, load, settings, client)
        report.checks.append(
            checks.count_check("Collector exporter send failures", 0, _exporter_failures(collector.telemetry_url))
        )
        if deployment.mutual_tls:
            report.checks.extend(_mutual_tls_checks(deployment))
        stages.end(started)
        stages.begin("stopping services")
    return report


def _sidecar_env(deployment: LocalDeployment, settings: VerifySettings) -> dict[str, str]:
    """The sidecar's telemetry setup, in the OpenTelemetry variables an operator would set."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": deployment.otlp_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": str(int(settings.export_interval * 1000)),
        "OTEL_SERVICE_NAME": "tokenlat-verify-sidecar",
        "TOKENLAT_HISTOGRAM": settings.histogram,
        # Nothing of the caller's own tokenlat setup may change what is being verified.
        "TOKENLAT_ATTRIBUTES": "",
        "TOKENLAT_SPANS": "false",
    }
    tls = deployment.client_tls
    if tls is not None:
        env["OTEL_EXPORTER_OTLP_CERTIFICATE"] = tls.ca_file or ""
        if tls.client_certificate_file and tls.client_key_file:
            env["OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"] = tls.client_certificate_file
            env["OTEL_EXPORTER_OTLP_CLIENT_KEY"] = tls.client_key_file
    return env


def _run_traffic(
    group: ProcessGroup,
    workdir: Path,
    model_url: str,
    deployment: LocalDeployment,
    settings: VerifySettings,
    stages: Stages,
    echo: Echo,
) -> LoadResult:
    """The load, measured by the library in this process, or by a `tokenlat sidecar` it passes through."""
    if settings.via_sidecar:
        sidecar = start_sidecar(group, workdir, model_url, _sidecar_env(deployment, settings))
        started = stages.begin(
            f"streaming {settings.requests} chat completions, {settings.concurrency} at a time, "
            f"through the tokenlat sidecar ({sidecar.url})"
        )
        try:
            load = _drive(sidecar.url, settings, None, echo)
        finally:
            # SIGTERM: the sidecar drains and flushes its last export while the Collector still runs.
            sidecar.process.stop()
        stages.end(started, f"{len(load.truths)} succeeded, {len(load.failures)} failed; sidecar stopped and flushed")
        return load
    started = stages.begin(
        f"streaming {settings.requests} chat completions, {settings.concurrency} at a time, "
        "through the tokenlat instrumentation"
    )
    telemetry = _telemetry(deployment, settings.export_interval, settings.histogram)
    try:
        load = _drive(model_url, settings, telemetry.metrics, echo)
    finally:
        # Also on Ctrl-C: the final export reaches the Collector while it is still running.
        telemetry.shutdown()
    stages.end(started, f"{len(load.truths)} succeeded, {len(load.failures)} failed; metrics flushed")
    return load


def _mutual_tls_checks(deployment: LocalDeployment) -> list[checks.Check]:
    """A client with the CA but no client certificate must be refused; the same probe with one must pass (so the
    refusal is the certificate's doing, not a broken probe)."""
    assert deployment.client_tls is not None
    without = dataclasses.replace(deployment.client_tls, client_certificate_file=None, client_key_file=None)
    rows = []
    for name, tls, expected in (
        ("OTLP client without a client certificate", without, "rejected"),
        ("OTLP client with the client certificate", deployment.client_tls, "accepted"),
    ):
        observed = "accepted" if otlp_export_accepted(deployment.otlp_endpoint, tls) else "rejected"
        rows.append(checks.Check(name, expected, observed, None, "exact", observed == expected, "mutual TLS"))
    return rows


def _drive(url: str, settings: VerifySettings, metrics: TokenMetrics | None, echo: Echo) -> LoadResult:
    step = max(1, settings.requests // 5)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            echo(f"      {done}/{total} requests done")

    attributes = {
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GEN_AI_PROVIDER_NAME: "tokenlat.synthetic",
        semconv.GEN_AI_REQUEST_MODEL: DEFAULT_MODEL,
    }
    return asyncio.run(
        run_load(
            url,
            settings.requests,
            settings.concurrency,
            metrics,
            attributes,
            DEFAULT_MODEL,
            settings.seed,
            progress,
        )
    )


def _compare(report: Report, load: LoadResult, settings: VerifySettings, client: checks.PrometheusClient) -> None:
    queries = checks.Queries(native=settings.histogram == "exponential")
    sent = len(load.truths)
    report.checks.append(checks.count_check("requests that succeeded", settings.requests, sent))
    for failure in load.failures[:5]:
        report.notes.append(f"failed {failure}")

    def count_check(name: str, expr: str, expected: int, timeout: float) -> None:
        observed = checks.wait_for_value(lambda: client.scalar(expr), expected, timeout)
        report.checks.append(checks.count_check(name, expected, observed))

    duration, usage, itl = (
        semconv.prometheus_name(s) for s in (semconv.DURATION_SPEC, semconv.TOKEN_USAGE_SPEC, semconv.ITL_SPEC)
    )
    # The first wait covers the whole delivery; the data of one export arrives together after that.
    count_check(f"{duration} count (requests)", queries.count(semconv.DURATION_SPEC), sent, settings.deadline)
    token_type = semconv.GEN_AI_TOKEN_TYPE.replace(".", "_")
    for kind, expected in (("output", load.output_tokens), ("input", load.input_tokens)):
        expr = queries.sum(semconv.TOKEN_USAGE_SPEC, f'{token_type}="{kind}"')
        count_check(f"{usage} sum ({kind} tokens)", expr, expected, 5.0)
    count_check(f"{itl} count (every token after the first)", queries.count(semconv.ITL_SPEC), len(load.gaps), 5.0)

    truths = checks.truth_series(load.truths)
    truths[semconv.INTER_TOKEN_LATENCY] = load.gaps
    for spec in (semconv.TTFT_SPEC, semconv.TPOT_SPEC, semconv.DURATION_SPEC, semconv.ITL_SPEC):
        for q in checks.QUANTILES:
            observed_q = client.scalar(queries.quantile(spec, q))
            report.checks.append(checks.quantile_check(spec, q, truths[spec.name], observed_q, queries.native))
    report.checks.append(checks.id_label_check(client.label_names()))
