"""What the model server scales on, shared by the KEDA (keda.py) and prometheus-adapter (hpa.py) renders.

Both ask the backend's Prometheus query API the same question, so it is written once: the profile's TTFT quantile
(what users feel first) or the model server's own queue depth, with the threshold taken from the profile's SLO.
The query always answers one finite element: histogram_quantile over a window without requests is NaN and a
missing series is no element, which KEDA reads as 0 but prometheus-adapter reports as an error; ``... >= 0 or
vector(0)`` turns both into 0, so a quiet model server scales in to min_replicas on either path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from tokenlat import semconv
from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import RenderError

#: Remote-write paths a query API base URL is derived from, where the same server answers queries.
_WRITE_PATHS = ("/api/v1/write", "/api/v1/receive")
#: Thanos Query's default HTTP port; Receive does not serve the query API, so the URL points at Query.
THANOS_QUERY_PORT = 10902
QUEUE_METRICS = {"vllm_queue": "vllm:num_requests_waiting", "sglang_queue": "sglang:num_queue_reqs"}


@dataclass(frozen=True)
class Trigger:
    """One scaling signal: the PromQL sent to the backend, what it is compared with, and how."""

    #: The expression without the guard: what a person runs in the query console to see the signal.
    expression: str
    #: What KEDA and the adapter send: ``expression``, NaN and no-data as 0, always one element.
    query: str
    #: A series of the signal's metric, for prometheus-adapter's discovery.
    series: str
    threshold: float
    #: "Value": the signal is compared as it is (a latency); "AverageValue": divided by the replicas (a queue).
    metric_type: str
    #: The external metric's name (prometheus-adapter) and the trigger's name (KEDA).
    name: str
    summary: str


def refusal(source: str, field: str, reason: str) -> RenderError:
    """A profile these renders cannot serve, named as profile errors are (file, field, reason): `render` exits 2."""
    return RenderError(f"{source}: {field}: {reason}")


def matchers(profile: Profile) -> str:
    """The label matchers of the model server's series: the profile's, else job (the service.name the model
    server's telemetry carries, by convention its Deployment name) for tokenlat's metrics, and the namespace (which
    a Kubernetes scrape adds) for the model server's own queue metrics."""
    scaling = profile.data["autoscaling"]
    if scaling["matchers"]:
        return str(scaling["matchers"])
    if scaling["metric"] == "ttft":
        return f'job="{scaling["target"]}"'
    return f'namespace="{scaling["namespace"]}"'


def trigger(profile: Profile) -> Trigger:
    scaling, slo = profile.data["autoscaling"], profile.data["slo"]
    selector = f"{{{matchers(profile)}}}"
    if scaling["metric"] in QUEUE_METRICS:
        metric = QUEUE_METRICS[scaling["metric"]]
        expression = f"sum({metric}{selector})"
        return Trigger(
            expression,
            f"({expression}) or vector(0)",
            f"{metric}{selector}",
            float(scaling["queue_per_replica"]),
            "AverageValue",
            f"{scaling['metric'].replace('_', '-')}-per-replica",
            f"{metric} per replica above {scaling['queue_per_replica']:g}",
        )
    q = float(slo["ttft_quantile"])
    name = semconv.prometheus_name(semconv.TTFT_SPEC)
    native = profile.native or bool(profile.data["metrics"]["native_custom_buckets"])
    series = f"{name}{selector}" if native else f"{name}_bucket{selector}"
    rate = f"rate({series}[{scaling['window']}])"
    expression = (
        f"histogram_quantile({q:g}, sum({rate}))" if native else f"histogram_quantile({q:g}, sum by (le) ({rate}))"
    )
    threshold = round(float(slo["ttft_seconds"]) * float(scaling["ttft_fraction"]), 6)
    percent = f"p{q * 100:g}"
    return Trigger(
        expression,
        f"({expression} >= 0) or vector(0)",
        series,
        threshold,
        "Value",
        f"ttft-{percent}",
        f"TTFT {percent} above {threshold:g}s ({scaling['ttft_fraction']:g} of slo.ttft_seconds "
        f"{slo['ttft_seconds']:g}s)",
    )


def query_url(profile: Profile) -> str:
    """The backend's query API base URL: autoscaling.query_url, else derived from the remote-write URL where the
    same server (Prometheus, VictoriaMetrics) or its conventional neighbour (Thanos Receive -> Query) answers."""
    scaling, backend = profile.data["autoscaling"], profile.data["backend"]
    if scaling["query_url"]:
        url = str(scaling["query_url"]).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise refusal(profile.source, "autoscaling.query_url", f"must be an http(s) URL, got {url!r}")
        return url
    kind, endpoint = backend["kind"], str(backend["endpoint"])
    if kind in ("aliyun", "tencent") or endpoint.startswith("${"):
        where = {
            "aliyun": "ARMS serves queries at the instance's HTTP API URL (console: the instance's Settings tab)",
            "tencent": "TMP serves queries at the instance's HTTP API address (console: the instance's basic info)",
        }.get(kind, "the remote-write URL comes from the environment, so nothing can be derived from it")
        raise refusal(
            profile.source,
            "autoscaling.query_url",
            f"is required for backend.kind {kind}: {where}, not at the remote-write URL",
        )
    parts = urlsplit(endpoint)
    path = parts.path
    for suffix in _WRITE_PATHS:
        if path.endswith(suffix):
            path = path[: -len(suffix)]
            break
    if kind == "thanos":
        host = parts.hostname or ""
        if not host.startswith("thanos-receive"):
            raise refusal(
                profile.source,
                "autoscaling.query_url",
                f"is required: Thanos Receive ({host}) serves no query API, and where Thanos Query runs cannot be "
                "derived from a host not named thanos-receive*",
            )
        return urlunsplit((parts.scheme, f"{host.replace('thanos-receive', 'thanos-query', 1)}:{THANOS_QUERY_PORT}",
                           path, "", ""))  # fmt: skip
    return urlunsplit((parts.scheme, parts.netloc, path, "", "")).rstrip("/")


def auth_mode(profile: Profile) -> str | None:
    """How the query API is authenticated: as the backend's remote write is (ARMS: AccessKey basic auth; TMP:
    APPID:token basic auth, or its bearer token), None without auth."""
    kind = profile.data["backend"]["auth"]["kind"]
    return None if kind == "none" else str(kind)


def secret_keys(profile: Profile) -> tuple[str, ...]:
    """The keys the query Secret must hold, named as KEDA's prometheus scaler reads them."""
    return {"basic": ("username", "password"), "bearer": ("bearerToken",), None: ()}[auth_mode(profile)]


def check_replicas(profile: Profile) -> None:
    scaling = profile.data["autoscaling"]
    if scaling["min_replicas"] > scaling["max_replicas"]:
        raise refusal(
            profile.source,
            "autoscaling.min_replicas",
            f"must not be above autoscaling.max_replicas ({scaling['max_replicas']})",
        )


def header(profile: Profile, what: str, lines: list[str]) -> str:
    """The comment block every autoscaling render starts with: what it is, the signal, and what to fill in."""
    t = trigger(profile)
    text = [
        # The profile's name, not its file: a render must not depend on where the checkout is (the committed samples).
        f"# {what}, rendered by `tokenlat render --profile {profile.name} --what ...`.",
        f"# Scales {profile.data['autoscaling']['namespace']}/{profile.data['autoscaling']['target']} on: {t.summary}.",
        f"# The signal, for the query console: {t.expression}",
        *(f"# {line}" for line in lines),
    ]
    if not profile.data["autoscaling"]["query_url"]:
        text.append(
            f"# The query API URL {query_url(profile)} is derived from backend.endpoint: set autoscaling.query_url "
            "where it differs."
        )
    elif "<" in profile.data["autoscaling"]["query_url"]:
        text.append("# autoscaling.query_url holds placeholders (<...>): set it in a profile that extends this one.")
    return "\n".join(text) + "\n"


def dump(documents: list[dict[str, Any]]) -> str:
    """Manifests as one multi-document YAML text, keys in the order written (as kubectl users read them)."""
    return "---\n".join(yaml.safe_dump(d, sort_keys=False, width=1000) for d in documents)


#: What the query Secret's keys hold, per backend (the credentials its query API takes).
_SECRET_VALUES = {
    "aliyun": "username = AccessKey ID, password = AccessKey secret (RAM user with AliyunPrometheusMetricReadAccess)",
    "tencent": "username = the account's APPID, password = the instance's token (bearerToken = the token, for bearer)",
}


def secret_lines(profile: Profile) -> list[str]:
    """How to create the query Secret: a kubectl command taking the values from the operator's shell (nothing
    secret is ever written into a render), and what each key holds for this backend."""
    keys = secret_keys(profile)
    if not keys:
        return ["The query API takes no credentials (backend.auth.kind none): no Secret."]
    scaling = profile.data["autoscaling"]
    literals = " ".join(f'--from-literal={key}="$QUERY_{key.upper()}"' for key in keys)
    kind = profile.data["backend"]["kind"]
    return [
        f"Credentials: the Secret {scaling['secret_name']} (never inline), created with",
        f"  kubectl -n {scaling['namespace']} create secret generic {scaling['secret_name']} {literals}",
        f"  ({_SECRET_VALUES.get(kind, ', '.join(keys) + ' of the query API')})",
    ]
