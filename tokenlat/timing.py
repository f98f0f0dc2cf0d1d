"""One request's clock readings and token counts, and the latencies derived from them: what the recorder measures
and the exporter aggregates, in a module of its own so that neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class RequestTiming:
    """Clock readings and token counts of one request; derived values are None where undefined."""

    start: float
    first_token: float | None = None
    end: float | None = None
    output_tokens: int = 0
    input_tokens: int | None = None
    error_type: str | None = None

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.start

    @property
    def duration(self) -> float | None:
        return None if self.end is None else self.end - self.start

    @property
    def time_per_output_token(self) -> float | None:
        # The conventions' server definition: the time after the first token spread over the tokens after it.
        ttft, duration = self.ttft, self.duration
        if ttft is None or duration is None or self.output_tokens < 2:
            return None
        return (duration - ttft) / (self.output_tokens - 1)
