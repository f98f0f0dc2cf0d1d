"""The metric contract: names, units, buckets and attribute keys, defined once.

Values follow the OpenTelemetry GenAI semantic conventions (status: Development; since
semconv 1.37 they live in the separate semantic-conventions-genai repository). Everything
that names a metric -- the SDK instruments, the docs, the Collector-side checks -- reads
it from here, so a rename or a bucket change happens in exactly one place.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- metric names -------------------------------------------------------------------------

TIME_TO_FIRST_TOKEN = "gen_ai.server.time_to_first_token"
TIME_PER_OUTPUT_TOKEN = "gen_ai.server.time_per_output_token"
REQUEST_DURATION = "gen_ai.server.request.duration"
TOKEN_USAGE = "gen_ai.client.token.usage"
# Extension: the conventions have only a proposal (semantic-conventions-genai PR 164) for the full per-token
# distribution. tokenlat uses the proposed name, records every gap between consecutive output tokens (a chunk
# of n tokens counts n times at gap/n, as SGLang does) and documents it in docs/metrics.md.
INTER_TOKEN_LATENCY = "gen_ai.server.inter_token_latency"

# --- attribute keys -----------------------------------------------------------------------

GEN_AI_OPERATION_NAME = "gen_ai.operation.name"
GEN_AI_PROVIDER_NAME = "gen_ai.provider.name"
GEN_AI_REQUEST_MODEL = "gen_ai.request.model"
GEN_AI_RESPONSE_MODEL = "gen_ai.response.model"
GEN_AI_TOKEN_TYPE = "gen_ai.token.type"
ERROR_TYPE = "error.type"

# The deployment's own low-cardinality keys (tokenlat extensions, not in the conventions): set per process
# (configure) or per request. Each has a handful of values in any deployment.
GPU_TYPE = "tokenlat.gpu.type"
QUANTIZATION = "tokenlat.quantization"
SCENE = "tokenlat.scene"
LORA_ADAPTER = "tokenlat.lora.adapter"
LORA_BASE_MODEL = "tokenlat.lora.base_model"
USER_TIER = "tokenlat.user.tier"

DEPLOYMENT_ATTRIBUTES: tuple[str, ...] = (GPU_TYPE, QUANTIZATION, SCENE, LORA_ADAPTER, LORA_BASE_MODEL, USER_TIER)

# Everything that may become a metric attribute (and so a Prometheus label): the library's allowlist and
# the default allowlist of the Collector profiles. Never an id of a request or a person.
METRIC_ATTRIBUTES: tuple[str, ...] = (
    GEN_AI_OPERATION_NAME,
    GEN_AI_PROVIDER_NAME,
    GEN_AI_REQUEST_MODEL,
    GEN_AI_RESPONSE_MODEL,
    GEN_AI_TOKEN_TYPE,
    ERROR_TYPE,
    *DEPLOYMENT_ATTRIBUTES,
)

# Span-only attributes: they identify a request or a person.
USER_ID_HASH = "tokenlat.user.id_hash"
REQUEST_ID = "tokenlat.request.id"

# Values of gen_ai.token.type.
TOKEN_TYPE_INPUT = "input"
TOKEN_TYPE_OUTPUT = "output"

# --- advisory bucket boundaries -----------------------------------------------------------

TTFT_BUCKETS: tuple[float, ...] = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    # Extension beyond the conventions: their ceiling of 10 s is too low for long prompts
    # (large-context prefill, queueing under load). Users of peer projects complained that
    # every slow request landed in +Inf, making p99 unreadable.
    15.0, 30.0, 60.0, 120.0,
)  # fmt: skip

TPOT_BUCKETS: tuple[float, ...] = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5,
)  # fmt: skip

DURATION_BUCKETS: tuple[float, ...] = (
    # The conventions' doubling series 0.01 .. 81.92 (14 values), written out literally so
    # the boundaries carry no floating-point noise from repeated multiplication.
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
    # Extension: long generations (thousands of output tokens, reasoning models) routinely
    # run past 82 s; three more doublings keep them out of +Inf up to ~11 minutes.
    163.84, 327.68, 655.36,
)  # fmt: skip

ITL_BUCKETS: tuple[float, ...] = (
    # Decode steps run from ~2 ms (small models, speculative decoding) to seconds under preemption; finer than
    # TPOT at the low end, where ITL regressions show first.
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075,
    0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

TOKEN_USAGE_BUCKETS: tuple[float, ...] = tuple(float(4**i) for i in range(14))  # 1, 4, 16 .. 67108864


# --- the five histograms ------------------------------------------------------------------


@dataclass(frozen=True)
class MetricSpec:
    """One histogram of the contract."""

    name: str
    unit: str
    description: str
    buckets: tuple[float, ...]


TTFT_SPEC = MetricSpec(TIME_TO_FIRST_TOKEN, "s", "Time to generate first token for successful responses", TTFT_BUCKETS)
TPOT_SPEC = MetricSpec(
    TIME_PER_OUTPUT_TOKEN,
    "s",
    "Time per output token generated after the first token for successful responses",
    TPOT_BUCKETS,
)
DURATION_SPEC = MetricSpec(
    REQUEST_DURATION,
    "s",
    "Generative AI server request duration such as time-to-last byte or last output token",
    DURATION_BUCKETS,
)
TOKEN_USAGE_SPEC = MetricSpec(TOKEN_USAGE, "{token}", "Number of input and output tokens used", TOKEN_USAGE_BUCKETS)

ITL_SPEC = MetricSpec(
    INTER_TOKEN_LATENCY,
    "s",
    "Time between consecutive output tokens, one observation per token after the first",
    ITL_BUCKETS,
)

# One observation per request (two for token usage: input and output), recorded in the request's finish() by
# tokenlat's own aggregation (histograms.MetricStore), not through the SDK's instruments.
HISTOGRAMS: tuple[MetricSpec, ...] = (TTFT_SPEC, TPOT_SPEC, DURATION_SPEC, TOKEN_USAGE_SPEC)
# Every histogram tokenlat exports: the per-request ones and the per-token inter-token distribution.
ALL_METRICS: tuple[MetricSpec, ...] = (*HISTOGRAMS, ITL_SPEC)

# Units the Collector's Prometheus translation turns into a name suffix. Only "s" is used by
# the contract; annotation units like "{token}" are dropped and add no suffix.
_UNIT_SUFFIXES = {"s": "seconds"}


def prometheus_name(spec: MetricSpec) -> str:
    """The metric's name after the Collector's Prometheus translation.

    Dots become underscores and the unit maps to a suffix: "s" adds ``_seconds``, a
    ``{...}`` annotation adds nothing. Histograms never get ``_total``.
    """
    name = re.sub(r"[^a-zA-Z0-9_:]", "_", spec.name)
    unit = re.sub(r"\{[^}]*\}", "", spec.unit)
    suffix = _UNIT_SUFFIXES.get(unit, unit)
    if suffix and not name.endswith("_" + suffix):
        name = f"{name}_{suffix}"
    return name
