"""verify, stage by stage: real Prometheus, real Collector, synthetic model, real instrumentation; then compare.

Like the Collector's own testbed: count what was sent, count what arrived, compare; then compare quantiles with
the truth. Every process started here is stopped however the run ends (failure, Ctrl-C, SIGTERM: see
tokenlat_cli/stopping.py and processes.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import secrets
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import requests
from opentelemetry.sdk.metrics.export import MetricExporter
from opentelemetry.sdk.trace.export import SpanExporter

from tokenlat import semconv
from tokenlat.configure import Telemetry, TLSFiles, configure
from tokenlat.recorder import TokenMetrics
from tokenlat_cli import stopping
from tokenlat_cli.collector import validate_config
from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import render_collector_config
from tokenlat_cli.verify import checks
from tokenlat_cli.verify.backends import (
    PROMETHEUS_KINDS,
    Backend,
    UnsupportedBackend,
    check_backend_supported,
    start_backend,
)
from tokenlat_cli.verify.cardinality import cardinality_checks
from tokenlat_cli.verify.certs import CertificateSet, make_certificates
from tokenlat_cli.verify.exemplars import EXEMPLAR_METRICS, TraceIds, exemplar_check
from tokenlat_cli.verify.load import Bounds, LoadResult, identities, run_load, truth_series
from tokenlat_cli.verify.polling import poll, wait_for_value
from tokenlat_cli.verify.probes import otlp_export_accepted
from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.promql import PrometheusClient, Queries
from tokenlat_cli.verify.report import LatencyDistribution, Report
from tokenlat_cli.verify.services import (
    Collector,
    CollectorEndpoints,
    start_collector,
    start_sidecar,
    start_synthetic,
)
from tokenlat_cli.verify.statistics import recorded_histograms, true_quantile
from tokenlat_cli.verify.synthetic import DEFAULT_MODEL, Distribution, SyntheticConfig, parse_token_range, plan_request
from tokenlat_cli.verify.traces import TraceSink, start_trace_sink, trace_checks

Echo = Callable[[str], None]
#: The metric attributes of every request of the load (the synthetic model, as its provider serves it).
LOAD_ATTRIBUTES: dict[str, str] = {
    semconv.GEN_AI_OPERATION_NAME: "chat",
    semconv.GEN_AI_PROVIDER_NAME: "tokenlat.synthetic",
    semconv.GEN_AI_REQUEST_MODEL: DEFAULT_MODEL,
}
TRACE_DECISION_WAIT = "1s"
WRONG_CREDENTIAL_REQUESTS = 5
WRONG_CREDENTIAL_RETRY = "3s"


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
    #: "explicit" (classic Prometheus histograms) or "exponential" (native histograms); None: the profile's
    #: metrics.histograms.
    histogram: str | None = None
    #: Send the traffic through `tokenlat sidecar`, which then does the measuring, instead of the library.
    via_sidecar: bool = False
    export_interval: float = 1.0


class UnsupportedProfile(ValueError):
    """A profile whose backend verify cannot stand up locally yet."""


def check_supported(profile: Profile) -> None:
    """Fail before starting anything when the profile needs what verify cannot stand up locally."""
    try:
        check_backend_supported(profile.data)
    except UnsupportedBackend as exc:
        raise UnsupportedProfile(f"{profile.source}: verify cannot check this profile locally: {exc}") from None


def without_traces(profile: Profile) -> Profile:
    data = copy.deepcopy(profile.data)
    data["traces"]["enabled"] = False
    return Profile(profile.name, profile.source, data)


@dataclass(frozen=True)
class LocalDeployment:
    """The profile pointed at this run's services, and how a legitimate client reaches its receiver."""

    profile: Profile
    otlp_endpoint: str
    client_tls: TLSFiles | None
    mutual_tls: bool


def local_deployment(
    profile: Profile,
    backend: Backend,
    endpoints: CollectorEndpoints,
    certs: CertificateSet,
    workdir: Path,
    trace_sink: str | None = None,
) -> LocalDeployment:
    """The same profile and pipeline, with every address pointed at this run's services and free ports, and every
    TLS file replaced by the certificates made for this run (the backend's CA and client certificate, the
    receiver's server certificate and client CA). Traces go to ``trace_sink`` and are decided after 1 s instead of
    the profile's decision_wait, to keep the run short."""
    check_supported(profile)
    data = copy.deepcopy(profile.data)
    if data["traces"]["enabled"]:
        if trace_sink is None:
            raise ValueError("a profile with traces needs a trace sink")
        data["traces"].update(endpoint=trace_sink, insecure=True, decision_wait=TRACE_DECISION_WAIT)
    data["backend"]["endpoint"] = backend.write_url
    if data["backend"]["wal"]["enabled"]:
        # A WAL of this run only: one left by an earlier run would be replayed into this run's backend.
        data["backend"]["wal"]["directory"] = str(workdir / "wal")
    backend_tls = data["backend"]["tls"]
    backend_tls.update(ca_file=backend.ca_file or "", insecure_skip_verify=False)
    cert, key = backend.client_cert or ("", "")
    backend_tls.update(cert_file=cert, key_file=key)
    data["receiver"]["grpc_endpoint"] = endpoints.otlp_grpc
    data["receiver"]["http_endpoint"] = endpoints.otlp_http
    data["service"]["health_endpoint"] = endpoints.health
    host, port = endpoints.telemetry.rsplit(":", 1)
    data["service"]["telemetry_host"] = host
    data["service"]["telemetry_port"] = int(port)
    tls = data["receiver"]["tls"]
    local = Profile(profile.name, profile.source, data)
    if not tls["enabled"]:
        return LocalDeployment(local, f"http://{endpoints.otlp_grpc}", None, False)
    mutual = bool(tls["client_ca_file"])
    tls.update(cert_file=str(certs.server_cert), key_file=str(certs.server_key))
    if mutual:
        tls["client_ca_file"] = str(certs.ca)
    client = TLSFiles(
        ca_file=str(certs.ca),
        client_certificate_file=str(certs.client_cert) if mutual else None,
        client_key_file=str(certs.client_key) if mutual else None,
    )
    return LocalDeployment(local, f"https://{endpoints.otlp_grpc}", client, mutual)


def histogram_kind(profile: Profile, settings: VerifySettings) -> str:
    """The histograms the run records: --histogram, else the profile's metrics.histograms."""
    return settings.histogram or ("exponential" if profile.native else "explicit")


def queries_for(profile: Profile, histogram: str) -> Queries:
    """PromQL for what the backend stores: one series per histogram for native histograms, and for classic ones
    sent as native histograms with custom buckets (NHCB); _bucket/_sum/_count series otherwise."""
    nhcb = histogram == "explicit" and profile.data["metrics"]["native_custom_buckets"]
    return Queries(native=histogram == "exponential" or nhcb)


def service_telemetry(
    deployment: LocalDeployment,
    interval: float,
    histogram: str,
    spans: SpanExporter | None = None,
    service_name: str = "tokenlat-verify",
    metric_exporter: MetricExporter | None = None,
) -> Telemetry:
    """The library's own setup, as a service would call it (the profile's bucket layout, as render tells services
    to set it); nothing from this process's environment leaks in. With ``spans``, one span per request goes there,
    and its trace id becomes the exemplar of the buckets the request lands in. ``metric_exporter`` replaces the
    OTLP exporter the library would build (the scale-out run wraps that exporter to hold and log exports)."""
    return configure(
        spans=spans is not None,
        span_exporter=spans,
        endpoint=deployment.otlp_endpoint,
        tls=deployment.client_tls,
        protocol="grpc",
        resource_attributes={"service.name": service_name},
        export_interval_millis=interval * 1000,
        histogram=histogram,
        buckets=deployment.profile.layout,
        metric_exporter=metric_exporter,
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
    run_started = time.time()
    settings = dataclasses.replace(settings, histogram=histogram_kind(profile, settings))
    report = Report(profile=profile.name, settings={**asdict(settings), "buckets": str(profile.layout)})
    with running_pipeline(profile, settings, workdir, stages) as pipeline:
        backend, deployment, load, sink = pipeline.backend, pipeline.deployment, pipeline.load, pipeline.sink
        started = stages.begin(f"waiting for the data in {backend.description} (up to {settings.deadline:.0f}s)")
        compare_with_truth(report, load, settings, backend.query, profile)
        _exemplars(report, profile, load, settings, backend.query, run_started)
        _cardinality(report, deployment, backend.query, settings)
        report.checks.append(
            checks.count_check(
                "Collector exporter send failures", 0, _exporter_failures(pipeline.collector.telemetry_url)
            )
        )
        if deployment.mutual_tls:
            report.checks.extend(_mutual_tls_checks(deployment))
        wrong = backend.wrong_credential()
        if wrong is not None:
            report.checks.append(
                _wrong_credential_check(
                    pipeline.group, workdir, profile, *wrong, pipeline.certs, load, settings.histogram
                )
            )
        if backend.tenant is not None:
            report.checks.append(tenant_check(backend, len(load.truths), queries_for(profile, settings.histogram)))
        if sink is not None:
            report.checks.extend(
                trace_checks(sink, deployment.otlp_endpoint, deployment.client_tls, deployment.profile.data,
                             pipeline.salt, seed=settings.seed)
            )  # fmt: skip
            report.notes.append(
                f"tail sampling decided after {TRACE_DECISION_WAIT} (verify's setting, not the profile's)"
            )
        stages.end(started)
        stages.begin("stopping services")
    return report


@dataclass(frozen=True)
class LoadedPipeline:
    """A running verify deployment after its load: the backend holds the load's data (or is receiving its last
    export) and every service is still up."""

    group: ProcessGroup
    certs: CertificateSet
    backend: Backend
    deployment: LocalDeployment
    collector: Collector
    sink: TraceSink | None
    #: The de-identification salt the Collector was given.
    salt: str
    load: LoadResult
    #: What the library recorded: "explicit" or "exponential".
    histogram: str

    def telemetry(self, service_name: str, interval: float = 0.5) -> Telemetry:
        """Another instrumented service, set up as the load's, sending to this pipeline's Collector: for data the
        load does not make (failed requests). Its own ``service_name`` (the series' job label) keeps its series
        apart from the load's, whose cumulative counts it would otherwise reset. Shut it down to flush."""
        return service_telemetry(self.deployment, interval, self.histogram, service_name=service_name)


@contextlib.contextmanager
def running_pipeline(
    profile: Profile, settings: VerifySettings, workdir: Path, stages: Stages
) -> Iterator[LoadedPipeline]:
    """verify's stages 1 to 5: the backend, the profile rendered for this run and validated, the Collector, the
    synthetic model server, and the load through them; then the caller's block runs with everything still up, so
    that run_verify can judge the data and other callers (the dashboard's end-to-end test) can ask the backend their
    own questions. Every process is stopped when the block ends, however it ends."""
    settings = dataclasses.replace(settings, histogram=histogram_kind(profile, settings))
    with ProcessGroup() as group, stopping.on_stop(group.terminate):
        # On SIGTERM or Ctrl-C the Stopper's thread signals every child at once (whatever this thread is blocked
        # in, each wait on a child then ends), and this thread unwinds from its next safe point; should it be stuck,
        # the Stopper's watchdog kills them before it ends the process.
        stopping.on_give_up(group.kill)
        certs = make_certificates(workdir / "certs")
        started = stages.begin(f"starting the {profile.data['backend']['kind']} backend's receiver")
        backend = start_backend(group, workdir, profile.data, certs)
        stages.end(started, f"{backend.description} at {backend.write_url}")

        started = stages.begin(f"rendering profile {profile.name} for local services and validating it")
        endpoints = CollectorEndpoints.pick()
        sink = start_trace_sink(group, workdir) if profile.data["traces"]["enabled"] else None
        deployment = local_deployment(profile, backend, endpoints, certs, workdir, sink.otlp_endpoint if sink else None)
        config = render_collector_config(deployment.profile)
        validate_config(config)
        stages.end(started, str(workdir / "collector.yaml"))

        started = stages.begin("starting the tokenlat Collector")
        # A fresh salt for the de-identification hash, and the backend credentials, in the environment variables
        # the profile names, as an operator would set them (never in the config).
        salt = secrets.token_hex(16)
        env = {profile.data["deidentification"]["salt_env"]: salt, **backend.env}
        collector = start_collector(group, workdir, config, endpoints, env=env)
        stages.end(
            started, f"OTLP gRPC on {deployment.otlp_endpoint}{' (mutual TLS)' if deployment.mutual_tls else ''}"
        )

        started = stages.begin(
            "starting the synthetic model server" + (" and the tokenlat sidecar" if settings.via_sidecar else "")
        )
        server = start_synthetic(group, workdir, synthetic_args(settings))
        stages.end(started, server.url)

        load = _run_traffic(group, workdir, server.url, deployment, settings, stages, stages.echo)
        assert settings.histogram is not None
        yield LoadedPipeline(group, certs, backend, deployment, collector, sink, salt, load, settings.histogram)


def synthetic_args(settings: VerifySettings) -> list[str]:
    """The synthetic model server's flags for the run's timings (services.start_synthetic)."""
    return [
        f"--seed={settings.seed}",
        f"--ttft={settings.ttft}",
        f"--inter-token={settings.inter_token}",
        f"--output-tokens={settings.output_tokens}",
    ]


def _cardinality(
    report: Report, deployment: LocalDeployment, client: PrometheusClient, settings: VerifySettings
) -> None:
    """The Collector's guard against a service that does not bound its labels (tokenlat_cli/verify/cardinality.py).
    Model names often come from clients: allowlisted model keys whose values the profile does not list are noted."""
    metrics = deployment.profile.data["metrics"]
    report.checks.extend(
        cardinality_checks(
            deployment.otlp_endpoint, deployment.client_tls, client, metrics["values"], settings.deadline
        )
    )
    open_keys = [
        key
        for key in (semconv.GEN_AI_REQUEST_MODEL, semconv.GEN_AI_RESPONSE_MODEL)
        if key in metrics["attributes"] and key not in metrics["values"]
    ]
    if open_keys:
        report.notes.append(
            f"{', '.join(open_keys)}: any value passes the Collector (no metrics.values in the profile); a service "
            "that takes model names from requests can add series"
        )


def _wrong_credential_check(
    group: ProcessGroup,
    workdir: Path,
    profile: Profile,
    backend: Backend,
    env: dict[str, str],
    certs: CertificateSet,
    load: LoadResult,
    histogram: str,
) -> checks.Check:
    """A second Collector, same profile, wrong credential (a wrong password, or no client certificate): its
    exporter must count failures, and nothing it sent may arrive (the backend's request count stays what the
    first Collector delivered)."""
    endpoints = CollectorEndpoints.pick()
    subdir = workdir / "wrong-credential"
    subdir.mkdir()
    deployment = local_deployment(without_traces(profile), backend, endpoints, certs, subdir)
    # A refused TLS handshake is retried (as a network error would be) for retry_max_elapsed, 5 minutes by
    # default; this Collector gives up after a few seconds so that the failure is counted within the run.
    deployment.profile.data["backend"].update(retry_max_elapsed=WRONG_CREDENTIAL_RETRY, retry_max_interval="1s")
    salt_env = profile.data["deidentification"]["salt_env"]
    config = render_collector_config(deployment.profile)
    collector = start_collector(group, subdir, config, endpoints, env={salt_env: "x", **env})
    telemetry = service_telemetry(deployment, 0.5, histogram)
    try:
        for _ in range(WRONG_CREDENTIAL_REQUESTS):
            with telemetry.metrics.request({semconv.GEN_AI_OPERATION_NAME: "chat"}) as rec:
                rec.tokens()
    finally:
        if not stopping.requested():  # as in _run_traffic: no export to a Collector being stopped
            telemetry.shutdown()
    failed = poll(lambda: _exporter_failures(collector.telemetry_url), lambda value: value > 0, 45.0)
    count = backend.query.scalar(queries_for(profile, histogram).count(semconv.DURATION_SPEC)) or 0
    collector.process.stop()
    arrived = count - len(load.truths)
    what = ", ".join(env) if env is backend.wrong_env else "no client certificate"
    return checks.Check(
        "wrong backend credential fails visibly",
        "failures counted, 0 arrived",
        f"{failed:.0f} failed, {arrived:.0f} arrived",
        None,
        "exact",
        failed > 0 and arrived == 0,
        f"a second Collector with a wrong credential ({what}), retrying for {WRONG_CREDENTIAL_RETRY}",
    )


def tenant_check(backend: Backend, requests_sent: int, queries: Queries) -> checks.Check:
    """Thanos: the data is stored under the profile's tenant (the THANOS-TENANT header reached Receive)."""
    observed = backend.query.scalar(queries.count(semconv.DURATION_SPEC, f'tenant_id="{backend.tenant}"'))
    return checks.count_check(f"requests stored under tenant_id={backend.tenant}", requests_sent, observed)


def _sidecar_env(deployment: LocalDeployment, settings: VerifySettings) -> dict[str, str]:
    """The sidecar's telemetry setup, in the OpenTelemetry variables an operator would set."""
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": deployment.otlp_endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
        "OTEL_METRIC_EXPORT_INTERVAL": str(int(settings.export_interval * 1000)),
        "OTEL_SERVICE_NAME": "tokenlat-verify-sidecar",
        "TOKENLAT_HISTOGRAM": histogram_kind(deployment.profile, settings),
        "TOKENLAT_BUCKETS": str(deployment.profile.layout),
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
            load = drive_load(sidecar.url, settings, None, echo)
        finally:
            # SIGTERM: the sidecar drains and flushes its last export while the Collector still runs.
            sidecar.process.stop()
        stages.end(started, f"{len(load.truths)} succeeded, {len(load.failures)} failed; sidecar stopped and flushed")
        return load
    started = stages.begin(
        f"streaming {settings.requests} chat completions, {settings.concurrency} at a time, "
        "through the tokenlat instrumentation"
    )
    spans = TraceIds()
    telemetry = service_telemetry(
        deployment, settings.export_interval, histogram_kind(deployment.profile, settings), spans
    )
    try:
        load = drive_load(model_url, settings, telemetry.metrics, echo)
    finally:
        # Also when a request fails: the final export reaches the Collector while it is still running. Not after a
        # stop request: the Collector is being stopped, and the export would only wait for its timeout (the
        # interrupted process then ends without running the SDK's exit hooks, which would do the same).
        if not stopping.requested():
            telemetry.shutdown()
    load.trace_ids = spans.ids
    load.recorded = recorded_histograms(telemetry.metrics.store)
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


def drive_load(
    url: str,
    settings: VerifySettings,
    metrics: TokenMetrics | None,
    echo: Echo,
    *,
    services: Sequence[TokenMetrics] = (),
    keep_going: Callable[[], bool] | None = None,
) -> LoadResult:
    """The load of ``settings`` against the model server at ``url``, measured by ``metrics`` (None: by something
    outside this process), or spread over ``services``; until ``keep_going`` says no, when given (load.run_load).
    A stop request (SIGTERM, Ctrl-C) cancels it, from any thread it runs in."""
    step = max(1, settings.requests // 5)

    def progress(done: int, total: int) -> None:
        if done % step == 0 or done == total:
            echo(f"      {done}/{total} requests done")

    attributes = LOAD_ATTRIBUTES

    async def load() -> LoadResult:
        # A stop request cancels the load from the Stopper's thread, in the loop's own thread (call_soon_threadsafe):
        # the CancelledError surfaces where the load awaits, never inside a finalizer.
        loop, task = asyncio.get_running_loop(), asyncio.current_task()
        assert task is not None

        def cancel() -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: the load is over anyway
                loop.call_soon_threadsafe(task.cancel)

        with stopping.on_stop(cancel):
            return await run_load(
                url,
                settings.requests,
                settings.concurrency,
                metrics,
                attributes,
                DEFAULT_MODEL,
                settings.seed,
                progress,
                ramp=_mean_stream_seconds(settings),
                services=services,
                keep_going=keep_going,
            )

    try:
        return asyncio.run(load())
    except asyncio.CancelledError:
        stopping.checkpoint()  # Interrupted, when the stop request cancelled it
        raise


def _mean_stream_seconds(settings: VerifySettings) -> float:
    """How long the synthetic server's first ``concurrency`` streams take on average: the load's ramp."""
    config = SyntheticConfig(
        seed=settings.seed,
        ttft=Distribution.parse(settings.ttft),
        inter_token=Distribution.parse(settings.inter_token),
        output_tokens=parse_token_range(settings.output_tokens),
    )
    first = min(settings.concurrency, settings.requests)
    return statistics.fmean(plan_request(config, i).total_seconds for i in range(first))


def _widest_interval(truths: Mapping[str, Sequence[float]], bounds: Bounds) -> str | None:
    """How sharp the checks through the sidecar are: their widest interval against its truth (None: no values).
    The client's and the sidecar's own delays widen it (verify.load), and a quantile anywhere in it passes."""
    widths: dict[str, float] = {}
    for spec in (semconv.TTFT_SPEC, semconv.TPOT_SPEC, semconv.DURATION_SPEC, semconv.ITL_SPEC):
        for q in checks.QUANTILES if truths[spec.name] else ():
            low, high = checks.truth_interval(truths[spec.name], q, bounds.of(spec))
            widths[f"{semconv.prometheus_name(spec)} p{q * 100:g}"] = (high - low) / true_quantile(truths[spec.name], q)
    if not widths:
        return None
    widest = max(widths, key=widths.__getitem__)
    return (
        f"through the sidecar, the widest interval a quantile could pass in was {widths[widest]:.1%} of its truth"
        f" ({widest}): the client's and the sidecar's delays during the load set it"
    )


def _exemplars(
    report: Report,
    profile: Profile,
    load: LoadResult,
    settings: VerifySettings,
    client: PrometheusClient,
    since: float,
) -> None:
    """The drill-down from a bucket to its trace, where the run can show it."""
    if settings.via_sidecar:
        report.notes.append("exemplars not checked: the sidecar records no spans in this run")
        return
    if profile.data["backend"]["kind"] not in PROMETHEUS_KINDS:
        report.notes.append(f"exemplars not checked: verify's {profile.data['backend']['kind']} keeps none")
        return
    queries = queries_for(profile, settings.histogram)
    for spec in EXEMPLAR_METRICS:
        report.checks.append(exemplar_check(client, queries, spec, load.trace_ids, since, time.time()))


def compare_with_truth(
    report: Report,
    load: LoadResult,
    settings: VerifySettings,
    client: PrometheusClient,
    profile: Profile,
) -> None:
    queries = queries_for(profile, settings.histogram)
    # The histograms' own promise: native (exponential) ones, or the classic layout's, whatever the queries.
    layout = None if settings.histogram == "exponential" else profile.layout
    sent = len(load.truths)
    report.checks.append(checks.count_check("requests that succeeded", settings.requests, sent))
    for failure in load.failures[:5]:
        report.notes.append(f"failed {failure}")

    def count_check(name: str, expr: str, expected: int, timeout: float) -> None:
        observed = wait_for_value(lambda: client.scalar(expr), expected, timeout)
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

    if settings.via_sidecar:
        report.notes.append(
            "quantiles judged against the truth only: the bucket counts the sidecar sent are in its own process"
        )
    truths = truth_series(load.truths)
    truths[semconv.INTER_TOKEN_LATENCY] = load.gaps
    for spec in (semconv.TTFT_SPEC, semconv.TPOT_SPEC, semconv.DURATION_SPEC, semconv.ITL_SPEC):
        answered: dict[float, float | None] = {}
        report.distributions.append(
            LatencyDistribution(
                semconv.prometheus_name(spec),
                "native" if layout is None else "classic",
                sorted(truths[spec.name]),
                answered,
            )
        )
        for q in checks.QUANTILES:
            observed_q = answered[q] = client.scalar(queries.quantile(spec, q))
            recorded = load.recorded.get(spec.name)  # none when the sidecar measured
            bounds = None if load.bounds is None else load.bounds.of(spec)
            report.checks.extend(
                checks.quantile_checks(spec, q, truths[spec.name], observed_q, layout, recorded, bounds)
            )
    if load.bounds is not None and (widest := _widest_interval(truths, load.bounds)):
        report.notes.append(widest)
    report.checks.append(checks.id_label_check(client.label_names()))
    sent_ids = {i for index in range(settings.requests) for i in identities(index)}
    report.checks.append(checks.id_value_check(client.label_values(), sent_ids))
