"""tokenlat: token-level latency (TTFT, TPOT, duration, token usage) of LLM streams via OpenTelemetry."""

from tokenlat.stream import TokenMetrics, instrument_stream, wrap_async_stream, wrap_stream

__all__ = ["TokenMetrics", "instrument_stream", "wrap_async_stream", "wrap_stream"]
