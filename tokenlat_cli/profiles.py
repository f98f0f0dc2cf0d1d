"""Profiles: what a deployment of the tokenlat Collector looks like, as one YAML file.

A profile names the backend (kind, endpoint, auth), pipeline sizing, the metric attribute allowlist,
de-identification, TLS and trace sampling. Built-in profiles ship inside this package (``profiles/``); any other
argument is read as a path. ``load_profile`` returns the profile validated, with every default filled in, so the
templates can render with StrictUndefined.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from tokenlat import semconv
from tokenlat.attributes import MAX_VALUE_CHARS, OTHER_VALUE, is_id_like
from tokenlat.buckets import BucketLayout
from tokenlat_cli.schema import (
    DURATION,
    ENV_NAME,
    ENV_REFERENCE,
    Bool,
    Enum,
    Float,
    Int,
    IntMap,
    List,
    ListMap,
    Obj,
    SchemaError,
    Str,
    StrMap,
    shown,
)

# A header whose name says it carries a credential must take its value from the environment.
_SECRET_HEADER = re.compile(r"authorization|token|secret|key|password|cookie", re.IGNORECASE)
HOST_PORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:[0-9]{1,5}$")
URL = re.compile(r"^https?://[^\s/]+(/\S*)?$")

DEFAULT_METRIC_ATTRIBUTES = list(semconv.METRIC_ATTRIBUTES)


class ProfileError(Exception):
    """A profile that cannot be used: the file, the field path and the reason."""

    def __init__(self, source: str, path: str, reason: str) -> None:
        super().__init__(f"{source}: {path}: {reason}" if path else f"{source}: {reason}")
        self.source = source
        self.path = path
        self.reason = reason


def _no_literal_secret(name: str, value: str, path: str) -> None:
    if _SECRET_HEADER.search(name) and not ENV_REFERENCE.search(value):
        raise SchemaError(
            path,
            "looks like a literal secret; reference an environment variable instead, e.g. ${env:MY_TOKEN}",
        )


def _check_auth(auth: dict[str, Any], path: str) -> None:
    needed = {"basic": "credentials_env", "bearer": "token_env", "none": None}[auth["kind"]]
    for name in ("credentials_env", "token_env"):
        if name == needed and not auth[name]:
            raise SchemaError(f"{path}.{name}", f"is required when {path}.kind is {auth['kind']}")
        if name != needed and auth[name]:
            raise SchemaError(f"{path}.{name}", f"does not apply when {path}.kind is {auth['kind']}")


BACKEND_KINDS = ("prometheus", "aliyun", "tencent", "thanos", "victoriametrics")


def _check_client_tls(tls: dict[str, Any], path: str) -> None:
    if bool(tls["cert_file"]) != bool(tls["key_file"]):
        missing = "key_file" if tls["cert_file"] else "cert_file"
        raise SchemaError(f"{path}.{missing}", "a client certificate needs both cert_file and key_file")


def _check_backend(backend: dict[str, Any], path: str) -> None:
    try:
        username = urlsplit(backend["endpoint"]).username
    except ValueError as exc:  # the pattern lets "http://[::1" through; urlsplit refuses it
        raise SchemaError(f"{path}.endpoint", f"is not a URL: {exc}") from None
    if username is not None:
        raise SchemaError(
            f"{path}.endpoint",
            "credentials in the URL are a literal secret; use backend.auth with an environment variable",
        )
    if backend["tenant"] and backend["kind"] != "thanos":
        raise SchemaError(f"{path}.tenant", "only applies when backend.kind is thanos")


def _check_receiver_tls(tls: dict[str, Any], path: str) -> None:
    if tls["enabled"]:
        for name in ("cert_file", "key_file"):
            if not tls[name]:
                raise SchemaError(f"{path}.{name}", f"is required when {path}.enabled is true")
    elif tls["client_ca_file"]:
        raise SchemaError(f"{path}.client_ca_file", f"mutual TLS needs {path}.enabled: true")


def _check_memory(limiter: dict[str, Any], path: str) -> None:
    if limiter["spike_limit_mib"] >= limiter["limit_mib"]:
        raise SchemaError(f"{path}.spike_limit_mib", f"must be below {path}.limit_mib ({limiter['limit_mib']})")


def _check_traces(traces: dict[str, Any], path: str) -> None:
    if traces["enabled"] and not traces["endpoint"]:
        raise SchemaError(f"{path}.endpoint", f"is required when {path}.enabled is true")


def _check_allowlist(profile: dict[str, Any], path: str) -> None:
    allowed = profile["metrics"]["attributes"]
    for key in profile["metrics"]["cardinality"]:
        if key not in allowed:
            raise SchemaError(f"metrics.cardinality.{key}", "is not in metrics.attributes")
    for key in profile["metrics"]["values"]:
        if key not in allowed:
            raise SchemaError(f"metrics.values.{key}", "is not in metrics.attributes")
        if key in profile["metrics"]["cardinality"]:
            raise SchemaError(
                f"metrics.cardinality.{key}", f"metrics.values.{key} lists its values already: remove this count"
            )
    user_ids = set(profile["deidentification"]["user_id_attributes"])
    for i, key in enumerate(profile["metrics"]["attributes"]):
        # Keys that identify a request or a person (the library's rule: it would refuse them at configure()).
        if key in user_ids or is_id_like(key):
            raise SchemaError(
                f"metrics.attributes[{i}]",
                f"{key!r} identifies a request or a user and must not become a metric label "
                "(it belongs on spans, reachable through exemplars)",
            )


def _check_histograms(metrics: dict[str, Any], path: str) -> None:
    try:
        BucketLayout.parse(metrics["buckets"])
    except ValueError as exc:
        raise SchemaError(f"{path}.buckets", str(exc)) from None
    if metrics["native_custom_buckets"] and metrics["histograms"] != "classic":
        raise SchemaError(f"{path}.native_custom_buckets", "applies to classic histograms only")


def _env_name(doc: str, default: str = "") -> Str:
    return Str(doc=doc, pattern=ENV_NAME, pattern_hint="an environment variable name like MY_TOKEN", default=default)


_duration = {"pattern": DURATION, "pattern_hint": "a duration like 500ms, 5s, 1m"}
_host_port = {"pattern": HOST_PORT, "pattern_hint": "host:port"}
_file = Str(doc="Path to a PEM file as seen by the Collector.", default="")

PROFILE_SCHEMA = Obj(
    doc="A tokenlat profile.",
    fields={
        "extends": Str(
            doc="A built-in profile this one starts from; the fields given here override its fields.", default=""
        ),
        "description": Str(doc="One line shown by `tokenlat profiles`.", default=""),
        "backend": Obj(
            doc="Where metrics go: a Prometheus remote-write receiver.",
            fields={
                "kind": Enum(
                    doc="The backend family: what verify stands up for it, and its remote-write details.",
                    choices=BACKEND_KINDS,
                    default="prometheus",
                ),
                "endpoint": Str(
                    doc="Remote-write URL (http or https, no credentials in it), or a ${env:VAR} reference.",
                    pattern=re.compile(URL.pattern + "|" + r"^\$\{env:[A-Za-z_][A-Za-z0-9_]*\}$"),
                    pattern_hint="an http(s) URL",
                ),
                "tenant": Str(doc="thanos: the tenant, sent in the THANOS-TENANT header.", default=""),
                "tls": Obj(
                    doc="TLS to the backend: a private CA, and a client certificate where the backend asks for one.",
                    fields={
                        "ca_file": _file,
                        "cert_file": _file,
                        "key_file": _file,
                        "insecure_skip_verify": Bool(
                            doc="Do not verify the backend's certificate (tests only).", default=False
                        ),
                    },
                    check=_check_client_tls,
                ),
                "wal": Obj(
                    doc="A write-ahead log on disk, so a Collector restart or a backend outage loses no data.",
                    fields={
                        "enabled": Bool(doc="Write to the WAL before sending.", default=False),
                        "directory": Str(doc="WAL directory (a persistent volume).", default="/var/lib/tokenlat/wal"),
                        "flush_interval": Str(
                            doc="Send what the WAL holds at least this often: the WAL delays delivery up to this long.",
                            default="15s",
                            **_duration,
                        ),
                        "buffer_size": Int(
                            doc="Or as soon as it holds this many write requests.", default=300, minimum=1
                        ),
                    },
                ),
                "auth": Obj(
                    doc="Credentials, always by environment variable name; never literal.",
                    fields={
                        "kind": Enum(doc="Auth scheme.", choices=("none", "basic", "bearer"), default="none"),
                        "credentials_env": _env_name("basic: variable holding base64(username:password)."),
                        "token_env": _env_name("bearer: variable holding the token."),
                    },
                    check=_check_auth,
                ),
                "headers": StrMap(
                    doc="Extra HTTP headers; credential-like headers must use ${env:VAR}.",
                    default={},
                    value_check=_no_literal_secret,
                ),
                "external_labels": StrMap(doc="Labels added to every series.", default={}),
                "timeout": Str(doc="Remote-write request timeout.", default="10s", **_duration),
                "queue_size": Int(doc="Remote-write queue capacity (requests).", default=10000, minimum=1),
                "max_parallel_requests": Int(
                    doc="Parallel remote-write requests for a large batch.", default=5, minimum=1, maximum=64
                ),
                "retry_max_elapsed": Str(
                    doc="Give up retrying a batch after this long, or after backend.timeout if that is shorter: at "
                    "the pinned release the timeout bounds the exporter's whole retry loop (measured).",
                    default="300s",
                    **_duration,
                ),
                "retry_max_interval": Str(doc="Longest wait between two retries.", default="30s", **_duration),
            },
            check=_check_backend,
        ),
        "receiver": Obj(
            doc="The OTLP receiver the instrumented services send to.",
            fields={
                "grpc_endpoint": Str(doc="OTLP/gRPC listen address.", default="0.0.0.0:4317", **_host_port),
                "http_endpoint": Str(doc="OTLP/HTTP listen address.", default="0.0.0.0:4318", **_host_port),
                "tls": Obj(
                    doc="Server TLS for the OTLP receiver; client_ca_file turns on mutual TLS.",
                    fields={
                        "enabled": Bool(doc="Serve OTLP over TLS.", default=False),
                        "cert_file": _file,
                        "key_file": _file,
                        "client_ca_file": _file,
                    },
                    check=_check_receiver_tls,
                ),
            },
        ),
        "pipeline": Obj(
            doc="Sizing of the Collector pipeline.",
            fields={
                "memory_limiter": Obj(
                    doc="Refuses data before the Collector runs out of memory (first processor).",
                    fields={
                        "check_interval": Str(doc="How often memory is checked.", default="1s", **_duration),
                        "limit_mib": Int(doc="Hard limit in MiB.", default=512, minimum=32),
                        "spike_limit_mib": Int(doc="Headroom below the limit in MiB.", default=128, minimum=1),
                    },
                    check=_check_memory,
                ),
                "batch": Obj(
                    doc="Batching before export.",
                    fields={
                        "timeout": Str(doc="Send a batch at least this often.", default="1s", **_duration),
                        "send_batch_size": Int(doc="Data points that trigger a send.", default=8192, minimum=1),
                        "send_batch_max_size": Int(doc="Largest batch sent.", default=16384, minimum=1),
                    },
                ),
            },
        ),
        "metrics": Obj(
            doc="What metric data points may carry, and how the latency histograms are bucketed.",
            check=_check_histograms,
            fields={
                "histograms": Enum(
                    doc="native: Prometheus native histograms (exponential, scale 6: every quantile within 1.1% "
                    "of the truth, one series per histogram), for receivers that store them (Prometheus, Thanos "
                    "Receive >= 0.41); classic: explicit buckets (metrics.buckets), for any receiver.",
                    choices=("native", "classic"),
                    default="classic",
                ),
                "buckets": Str(
                    doc="Classic histograms' boundaries (tokenlat.buckets, TOKENLAT_BUCKETS): geometric[:TARGET] "
                    "keeps quantiles within TARGET (default 0.05) of the truth over each metric's operating range "
                    "(METRIC=LOW-HIGH) with thresholds as boundaries (METRIC@VALUE); semconv: the conventions' "
                    "advisory buckets, which promise no accuracy.",
                    default="geometric",
                ),
                "native_custom_buckets": Bool(
                    doc="Classic only: send the explicit buckets as native histograms with custom buckets (NHCB, "
                    "one series per histogram instead of one per bucket); the receiver must store them "
                    "(Prometheus 3.x).",
                    default=False,
                ),
                "attributes": List(
                    doc="Allowlist of data-point attribute keys; all others are dropped in the Collector.",
                    item=Str(),
                    default=DEFAULT_METRIC_ATTRIBUTES,
                ),
                "cardinality": IntMap(
                    doc="Distinct values expected per allowlisted attribute; render reports the series they allow.",
                    default={},
                    minimum=1,
                ),
                "values": ListMap(
                    doc=f"The values an allowlisted attribute may take; the Collector records any other value as "
                    f"`{OTHER_VALUE}`, so a service that does not bound its own labels (a model name taken from "
                    "requests) cannot add series. Attributes not listed here take any value.",
                    default={},
                ),
                "max_value_chars": Int(
                    doc="Attribute values are cut to this many characters in the Collector.",
                    default=MAX_VALUE_CHARS,
                    minimum=1,
                ),
            },
        ),
        "deidentification": Obj(
            doc="User ids are hashed with a salt from the environment before anything leaves the Collector.",
            fields={
                "user_id_attributes": List(
                    doc="Span attributes holding user ids.", item=Str(), default=["user.id", "enduser.id"]
                ),
                "salt_env": _env_name("Environment variable holding the hashing salt.", "TOKENLAT_USER_ID_SALT"),
            },
        ),
        "traces": Obj(
            doc="Optional trace pipeline with tail sampling.",
            fields={
                "enabled": Bool(doc="Render a traces pipeline.", default=False),
                "endpoint": Str(doc="OTLP/gRPC endpoint of the trace backend.", default="", **_host_port),
                "insecure": Bool(doc="Plain-text gRPC to the trace backend.", default=False),
                "decision_wait": Str(doc="How long a trace is held before deciding.", default="10s", **_duration),
                "vip_attribute": Str(doc="Span attribute naming the user tier.", default="tokenlat.user.tier"),
                "vip_values": List(doc="Tiers kept at 100%.", item=Str(), default=["vip"]),
                "slow_ttft_seconds": Float(
                    doc="Keep every trace whose TTFT span attribute passes this.", default=2.0, minimum=0.0
                ),
                "sample_percentage": Float(
                    doc="Share of the remaining traces kept.", default=5.0, minimum=0.0, maximum=100.0
                ),
            },
            check=_check_traces,
        ),
        "tiers": Obj(
            doc="The two-tier layout (`render --role agent|gateway`): an agent per node routes every signal to a "
            "tier of gateways, which guard and export it (docs/scale-out.md). Gateways run this profile's receiver, "
            "so agents speak TLS to them exactly when `receiver.tls` is enabled.",
            fields={
                "gateways": List(
                    doc="The gateways' OTLP/gRPC addresses (host:port) that agents route to (`render --role agent`).",
                    item=Str(**_host_port),
                    default=[],
                ),
                "metrics_routing": Enum(
                    doc="What keeps a metric series on one gateway: `resource` (all the points of one service "
                    "instance) or `service` (all of one service.name). Both keep the points the gateway's guard "
                    "merges together; finer keys (streamID) would not.",
                    choices=("resource", "service"),
                    default="resource",
                ),
            },
        ),
        "slo": Obj(
            doc="What users are promised, and when to page: read by the rules, the dashboard and autoscaling "
            "(`render --what` rules, dashboard, keda).",
            fields={
                "ttft_seconds": Float(doc="TTFT threshold of the SLO and the classic alert.", default=2.0, minimum=0.0),
                "ttft_quantile": Float(
                    doc="Quantile of the classic TTFT alert (p95 above ttft_seconds).",
                    default=0.95,
                    minimum=0.0,
                    maximum=1.0,
                ),
                "ttft_objective": Float(
                    doc="Share of requests whose TTFT must be within ttft_seconds (burn-rate alerts).",
                    default=0.99,
                    minimum=0.0,
                    maximum=1.0,
                ),
                "tpot_seconds": Float(doc="Time-per-output-token threshold.", default=0.1, minimum=0.0),
                "error_ratio": Float(
                    doc="Share of failed requests that alerts.", default=0.05, minimum=0.0, maximum=1.0
                ),
                "min_request_rate": Float(
                    doc="Requests per second below which latency alerts stay silent (too few requests to page on).",
                    default=50.0,
                    minimum=0.0,
                ),
                "for": Str(doc="How long a condition must hold before an alert fires.", default="5m", **_duration),
                "runbook_url": Str(
                    doc="Where alerts' runbook_url annotations point: docs/rules.md as your team reads it (each alert "
                    "adds #its-name).",
                    default="docs/rules.md",
                ),
            },
        ),
        "alerting": Obj(
            doc="Alerts in the team's chat, through `tokenlat alert-relay` (`render --what alertmanager`). A robot "
            "is used when its webhook variable is named; secrets stay in the environment.",
            fields={
                "relay_url": Str(
                    doc="Where Alertmanager posts alerts: the relay's address.",
                    default="http://127.0.0.1:9096/alerts",
                ),
                "dingtalk_webhook_env": _env_name("Variable holding the DingTalk robot's webhook URL."),
                "dingtalk_secret_env": _env_name("Variable holding the DingTalk robot's signing secret."),
                "feishu_webhook_env": _env_name("Variable holding the Feishu/Lark robot's webhook URL."),
                "feishu_secret_env": _env_name("Variable holding the Feishu/Lark robot's signing secret."),
                "wecom_webhook_env": _env_name("Variable holding the WeCom group robot's webhook URL."),
                "group_wait": Str(
                    doc="Alertmanager: how long a new alert group waits for more alerts before its first message.",
                    default="30s",
                    **_duration,
                ),
                "group_interval": Str(
                    doc="Alertmanager: how long a group waits before a message about what changed in it (resolved "
                    "too).",
                    default="5m",
                    **_duration,
                ),
                "repeat_interval": Str(
                    doc="Alertmanager: how often a group that still fires is sent again.", default="4h", **_duration
                ),
                "queue_size": Int(
                    doc="The relay: notifications each robot's queue holds while its rate limit holds them back; "
                    "beyond it the oldest is dropped (and counted).",
                    default=100,
                    minimum=1,
                    maximum=10000,
                ),
                "max_attempts": Int(
                    doc="The relay: sends of one message before it gives up (a robot that says too frequent, "
                    "HTTP 429, a 5xx or a network error is retried with backoff).",
                    default=6,
                    minimum=1,
                    maximum=20,
                ),
            },
        ),
        "autoscaling": Obj(
            doc="Scaling the model server on what users feel (`render --what` keda, hpa).",
            fields={
                "target": Str(doc="The Deployment to scale.", default="model-server"),
                "namespace": Str(doc="Its namespace.", default="default"),
                "min_replicas": Int(doc="Fewest replicas.", default=1, minimum=0),
                "max_replicas": Int(doc="Most replicas.", default=8, minimum=1),
                "query_url": Str(
                    doc="The backend's Prometheus query API (base URL), which is not its remote-write URL.",
                    default="",
                ),
                "metric": Enum(
                    doc="What scales: ttft (the slo.ttft_quantile TTFT quantile), or the model server's queue "
                    "(vllm:num_requests_waiting, sglang:num_queue_reqs), scraped into the same backend.",
                    choices=("ttft", "vllm_queue", "sglang_queue"),
                    default="ttft",
                ),
                "matchers": Str(
                    doc='PromQL label matchers selecting the model server\'s series; empty: job="<target>" for '
                    'ttft (the service.name the model server records under), namespace="<namespace>" for the queue '
                    "metrics.",
                    default="",
                ),
                "ttft_fraction": Float(
                    doc="Scale out when the TTFT quantile passes this share of slo.ttft_seconds, so new replicas "
                    "are up before the SLO is broken.",
                    default=0.8,
                    minimum=0.0,
                    maximum=1.0,
                ),
                "queue_per_replica": Float(
                    doc="Queue metrics: waiting requests per replica to aim at.", default=4.0, minimum=0.0
                ),
                "window": Str(
                    doc="rate() window of the TTFT quantile: at least twice the services' metric export interval.",
                    default="2m",
                    **_duration,
                ),
                "secret_name": Str(
                    doc="The Kubernetes Secret holding the query API's credentials (keys username and password, "
                    "or bearerToken), referenced by the TriggerAuthentication and the adapter.",
                    default="tokenlat-query",
                ),
                "adapter_namespace": Str(
                    doc="Namespace of prometheus-adapter (the hpa artefact's ConfigMap).", default="monitoring"
                ),
            },
        ),
        "deploy": Obj(
            doc="Running the Collector (`render --what` k8s, systemd).",
            fields={
                "namespace": Str(doc="Kubernetes namespace of the Collector.", default="tokenlat"),
                "image": Str(doc="The Collector image (built from collector/Dockerfile).", default="tokenlat-otelcol"),
                "gateway_replicas": Int(doc="Gateways in the two-tier layout.", default=3, minimum=1),
                "secret_name": Str(
                    doc="The Kubernetes Secret holding every variable the config reads.", default="tokenlat-collector"
                ),
                "cpu_request": Str(doc="CPU each Collector pod requests (a Kubernetes quantity).", default="250m"),
                "cpu_limit": Str(doc="CPU each Collector pod may use (a Kubernetes quantity).", default="2"),
                "wal_storage": Str(
                    doc="Size of the WAL's volume claim (backend.wal, single-tier layout).", default="2Gi"
                ),
            },
        ),
        "service": Obj(
            doc="The Collector's own endpoints.",
            fields={
                "health_endpoint": Str(doc="health_check listen address.", default="0.0.0.0:13133", **_host_port),
                "telemetry_host": Str(doc="Host of the Collector's own Prometheus metrics.", default="0.0.0.0"),
                "telemetry_port": Int(doc="Port of the Collector's own metrics.", default=8888, minimum=1),
                "log_level": Enum(
                    doc="Collector log level.", choices=("debug", "info", "warn", "error"), default="info"
                ),
            },
        ),
    },
    check=_check_allowlist,
)


@dataclass(frozen=True)
class Profile:
    """A validated profile: its name, the file it came from and the normalised data."""

    name: str
    source: str
    data: dict[str, Any]

    @property
    def native(self) -> bool:
        return bool(self.data["metrics"]["histograms"] == "native")

    @property
    def layout(self) -> BucketLayout:
        return BucketLayout.parse(self.data["metrics"]["buckets"])

    def library_env(self) -> dict[str, str]:
        """The tokenlat variables a service (or sidecar) needs to record the histograms this profile expects."""
        return {
            "TOKENLAT_HISTOGRAM": "exponential" if self.native else "explicit",
            "TOKENLAT_BUCKETS": str(self.layout),
        }


def builtin_dir() -> Path:
    return Path(str(resources.files("tokenlat_cli") / "profiles"))


def builtin_names() -> list[str]:
    return sorted(p.stem for p in builtin_dir().glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A built-in profile name, or a path to a profile file."""
    builtin = builtin_dir() / f"{name_or_path}.yaml"
    if "/" not in name_or_path and not name_or_path.endswith((".yaml", ".yml")):
        if builtin.is_file():
            return builtin
        raise ProfileError(name_or_path, "", f"no such built-in profile; known profiles: {', '.join(builtin_names())}")
    path = Path(name_or_path)
    if not path.is_file():
        raise ProfileError(name_or_path, "", "no such file")
    return path


def _read_yaml(path: Path, source: str) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ProfileError(source, f"byte {exc.start + 1}", "not UTF-8 text") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ProfileError(source, where, f"invalid YAML: {problem}") from None
    except ValueError as exc:  # a scalar PyYAML cannot build: a date like 2020-13-45, an int of 5,000 digits
        raise ProfileError(source, "", f"invalid YAML: {exc}") from None
    except (AttributeError, KeyError, TypeError):  # PyYAML's constructors fail so on `!!timestamp x`, `!!bool x`
        raise ProfileError(source, "", "invalid YAML: a tagged value that does not fit its tag") from None
    except RecursionError:  # [[[[... thousands deep: PyYAML composes recursively
        raise ProfileError(source, "", "invalid YAML: nested too deeply") from None


def _merge(base: Any, override: Any) -> Any:
    """``override`` on top of ``base``: mappings merge key by key, anything else (lists too) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        return {**base, **{key: _merge(base.get(key), value) for key, value in override.items()}}
    return override


def _source(path: Path) -> str:
    return str(path) if path.parent != builtin_dir() else f"built-in profile {path.stem} ({path})"


def _resolve_extends(raw: Any, source: str, seen: tuple[str, ...]) -> Any:
    """The raw profile with its ``extends`` chain merged in (built-in profiles only, no cycles)."""
    if not isinstance(raw, dict) or not raw.get("extends"):
        return raw
    base_name = raw["extends"]
    if not isinstance(base_name, str) or base_name not in builtin_names():
        raise ProfileError(
            source, "extends", f"must name a built-in profile ({', '.join(builtin_names())}), got {shown(base_name)}"
        )
    if base_name in seen:
        raise ProfileError(
            source, "extends", f"profiles extend each other in a cycle: {' -> '.join((*seen, base_name))}"
        )
    base_path = builtin_dir() / f"{base_name}.yaml"
    base = _resolve_extends(_read_yaml(base_path, _source(base_path)), _source(base_path), (*seen, base_name))
    return _merge(base, raw)


def load_profile(name_or_path: str) -> Profile:
    path = resolve(name_or_path)
    source = _source(path)
    raw = _resolve_extends(_read_yaml(path, source), source, (path.stem,))
    try:
        data = PROFILE_SCHEMA.validate(raw, "")
    except SchemaError as exc:
        raise ProfileError(source, exc.path, exc.reason) from None
    return Profile(name=path.stem, source=source, data=data)
