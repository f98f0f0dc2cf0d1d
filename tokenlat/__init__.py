"""tokenlat: token-level latency of LLM inference (TTFT, TPOT, inter-token latency, usage) with OpenTelemetry.

Three lines in a service:

    telemetry = tokenlat.configure()
    async for chunk in tokenlat.instrument_stream(engine_stream, telemetry.metrics, attributes={...}): ...
    # or: with telemetry.metrics.request(attributes) as rec: ... rec.tokens(n) ...
"""

from tokenlat.configure import ConfigurationError, Telemetry, TLSFiles, configure
from tokenlat.histograms import TokenlatMetricExporter
from tokenlat.recorder import RequestRecorder, TokenMetrics
from tokenlat.stream import instrument, instrument_stream, wrap_async_stream, wrap_stream
from tokenlat.timing import RequestTiming

__all__ = [
    "ConfigurationError",
    "RequestRecorder",
    "RequestTiming",
    "TLSFiles",
    "Telemetry",
    "TokenMetrics",
    "TokenlatMetricExporter",
    "configure",
    "instrument",
    "instrument_stream",
    "wrap_async_stream",
    "wrap_stream",
]
