"""Rendering a profile into a Collector configuration.

The template holds the layout; this module derives the few values that would be unreadable to build in jinja
(OTTL statements, the list of extensions, the environment variables the config needs). Rendering is a pure
function of the profile, so the committed configs of the built-in profiles can be checked for drift.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2

from tokenlat import semconv
from tokenlat.attributes import OTHER_VALUE
from tokenlat.histograms import OVERFLOW_ATTRIBUTE
from tokenlat_cli.profiles import Profile

_ENV_IN_TEXT = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)")


def env_vars_referenced(config_text: str) -> list[str]:
    """The environment variables a rendered config reads, sorted."""
    return sorted(set(_ENV_IN_TEXT.findall(config_text)))


def env_ref(var: str) -> str:
    return "${env:" + var + "}"


def _quote(value: object) -> str:
    """A YAML scalar that is read back exactly.

    JSON strings are valid YAML and escape everything needed; a printable string holding double quotes (an OTTL
    statement) reads better single-quoted, where only the single quote itself needs doubling.
    """
    if isinstance(value, str) and '"' in value and value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value, ensure_ascii=False)


def _ottl_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class BackendAuth:
    scheme: str
    token: str


def _auth(profile: dict[str, Any]) -> BackendAuth | None:
    auth = profile["backend"]["auth"]
    if auth["kind"] == "bearer":
        return BackendAuth("Bearer", env_ref(auth["token_env"]))
    if auth["kind"] == "basic":
        # bearertokenauth with scheme Basic sends "Authorization: Basic <base64(user:password)>": basicauth does
        # not resolve at the pinned release, and this needs no extra component.
        return BackendAuth("Basic", env_ref(auth["credentials_env"]))
    return None


def _metric_guard(profile: dict[str, Any]) -> tuple[list[str], str]:
    """The metric pipeline's cardinality guard: data-point statements (values outside metrics.values become
    OTHER_VALUE, then every value is cut to metrics.max_value_chars), and one metric statement that keeps only the
    allowlisted keys and merges the points left with the same attributes.

    Merging is what makes dropping safe. Points that differed only in a dropped key (a user id) or in a value now
    replaced would otherwise reach the backend as one series with several samples at one timestamp, which
    Prometheus refuses (and the whole write request with them). Summing them is right for the counters and
    histograms services send: cumulative totals of disjoint sets of requests add up.
    """
    metrics = profile["metrics"]
    statements = []
    for key, values in metrics["values"].items():
        attr = f"datapoint.attributes[{_ottl_string(key)}]"
        outside = " and ".join(f"{attr} != {_ottl_string(value)}" for value in values)
        statements.append(f"set({attr}, {_ottl_string(OTHER_VALUE)}) where {attr} != nil and {outside}")
    statements.append(f"truncate_all(datapoint.attributes, {metrics['max_value_chars']})")
    # The library's overflow marker passes with the allowlist: without it, the overflow point of a metric at its cap
    # of attribute sets would be merged into the point without attributes (one bounded boolean, no cardinality cost).
    kept = [*metrics["attributes"], OVERFLOW_ATTRIBUTE]
    allowlist = ", ".join(_ottl_string(key) for key in dict.fromkeys(kept))
    return statements, f'aggregate_on_attributes("sum", [{allowlist}])'


def _deidentify_statements(profile: dict[str, Any]) -> list[str]:
    # The salt is an OTTL string literal filled in by the Collector from the environment at start.
    salt = _ottl_string(env_ref(profile["deidentification"]["salt_env"]))
    statements = []
    for key in profile["deidentification"]["user_id_attributes"]:
        attr = f"span.attributes[{_ottl_string(key)}]"
        statements.append(f'set({attr}, SHA256(Concat([{salt}, {attr}], ":"))) where {attr} != nil')
    return statements


ROLES = {
    "standalone": "one Collector: metrics to the backend, traces tail-sampled here",
    "agent": "node agent: metrics routed by resource and traces (de-identified) by trace id to the gateways",
    "gateway": "gateway: guards and exports the metrics the agents route to it, and tail-samples their traces",
}


class RenderError(ValueError):
    """A profile that cannot be rendered for the role asked."""


def _backend_headers(p: dict[str, Any]) -> dict[str, str]:
    headers = dict(p["backend"]["headers"])
    if p["backend"]["tenant"]:
        headers["THANOS-TENANT"] = p["backend"]["tenant"]
    return headers


def _backend_tls(p: dict[str, Any]) -> dict[str, Any]:
    tls = p["backend"]["tls"]
    rendered: dict[str, Any] = {key: tls[key] for key in ("ca_file", "cert_file", "key_file") if tls[key]}
    if tls["insecure_skip_verify"]:
        rendered["insecure_skip_verify"] = True
    return rendered


def template_context(profile: Profile, role: str = "standalone") -> dict[str, Any]:
    p = profile.data
    traces = p["traces"]["enabled"]
    if role == "agent" and not p["tiers"]["gateways"]:
        raise RenderError(f"{profile.source}: tiers.gateways: --role agent needs the gateways' host:port addresses")
    agent = role == "agent"
    deidentify = traces and role != "gateway"
    tail_sampling = traces and not agent
    traces_processors = [
        name
        for name, wanted in (
            ("memory_limiter", traces),
            ("transform/deidentify", deidentify),
            ("tail_sampling", tail_sampling),
            ("batch", traces),
        )
        if wanted
    ]
    auth = None if agent else _auth(p)
    datapoint_guard, metric_guard = _metric_guard(p)
    return {
        "profile": profile,
        "p": p,
        "library_env": profile.library_env(),
        "role_flag": "" if role == "standalone" else f" --role {role}",
        "role_description": ROLES[role],
        "role": role,
        "agent": agent,
        "deidentify": deidentify,
        "tail_sampling": tail_sampling,
        "traces_processors": traces_processors,
        "auth": auth,
        "headers": _backend_headers(p),
        "backend_tls": _backend_tls(p),
        "extension_names": ["health_check"] + (["bearertokenauth/backend"] if auth else []),
        "datapoint_guard_statements": datapoint_guard,
        "metric_guard_statement": metric_guard,
        "deidentify_statements": _deidentify_statements(p),
        "slow_ttft_condition": (
            f'span.attributes["gen_ai.response.time_to_first_chunk"] != nil and '
            f'span.attributes["gen_ai.response.time_to_first_chunk"] > {p["traces"]["slow_ttft_seconds"]}'
        ),
    }


def _environment() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(resources.files("tokenlat_cli") / "templates"))
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML; values are quoted with the q filter
    )
    env.filters["q"] = _quote
    return env


def render_collector_config(profile: Profile, role: str = "standalone") -> str:
    template = _environment().get_template("collector.yaml.j2")
    context = template_context(profile, role)
    body = template.render(context, env_vars=[])
    # The header lists every variable the body references, so an operator sees them before deploying.
    return template.render(context, env_vars=env_vars_referenced(body))


@dataclass(frozen=True)
class SeriesEstimate:
    """What the metric allowlist and the histogram layout let the five histograms cost in active series."""

    total: int  # upper bound over all five histograms
    undeclared: list[str]  # allowlisted attributes without a declared count (counted as 1)
    buckets: dict[str, int]  # boundaries per metric (0 for native histograms, whose buckets are not series)
    per_histogram: dict[str, int]  # series one attribute set of each metric costs


def series_estimate(profile: Profile) -> SeriesEstimate:
    """Upper bound of the active series the allowlist lets the five histograms produce, from the declared
    label-value counts and the bucket layout: the cost of accuracy in plain sight."""
    p = profile.data
    declared = p["metrics"]["cardinality"]
    listed = p["metrics"]["values"]
    combos = 1
    undeclared = []
    for key in p["metrics"]["attributes"]:
        if key in (semconv.GEN_AI_TOKEN_TYPE, semconv.ERROR_TYPE):
            continue  # accounted for per metric below
        if key in listed:
            combos *= len(listed[key]) + 1  # and OTHER_VALUE
        elif key in declared:
            combos *= declared[key]
        else:
            undeclared.append(key)
    error_types = declared.get(semconv.ERROR_TYPE, 1) + 1  # + the series without error.type
    one_series = profile.native or p["metrics"]["native_custom_buckets"]
    layout = profile.layout
    total = 0
    buckets: dict[str, int] = {}
    per_histogram: dict[str, int] = {}
    for spec in semconv.ALL_METRICS:
        buckets[spec.name] = 0 if profile.native else len(layout.bounds(spec.name))
        # Native (and NHCB): one series per histogram; classic: a _bucket per bound and +Inf, _sum, _count.
        per_histogram[spec.name] = 1 if one_series else buckets[spec.name] + 1 + 2
        per_spec = combos
        if spec is semconv.DURATION_SPEC:
            per_spec *= error_types
        if spec is semconv.TOKEN_USAGE_SPEC:
            per_spec *= 2  # input, output
        total += per_spec * per_histogram[spec.name]
    return SeriesEstimate(total, undeclared, buckets, per_histogram)
