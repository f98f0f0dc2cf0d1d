"""CPU time of the sidecar's measuring per relayed chunk, in isolation: the per-chunk path of an OpenAI stream.

    python -m bench.measure_path            # 300 streams of 36 chunks, best of 7 repeats

What ``bench.sidecar`` measures on a whole process (with sockets, the event loop and three processes on the
cores, which make one run's figure move by 20% or more), this measures on the measuring alone, so that two
versions of the code can be compared back to back: every chunk goes through ``Exchange.feed`` (as
``Hop.response_body`` hands it over after relaying it); each stream is an ``Exchange`` from its first chunk to
``finish`` (recorder created, metrics recorded).
The stream is what the bench's synthetic server sends: a role chunk, content chunks, the finish chunk, the usage
chunk and ``[DONE]``. The parser alone and ``json.loads`` alone are timed too, to show where the time goes.
"""

from __future__ import annotations

import argparse
import gc
import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from tokenlat.configure import configure
from tokenlat.parsers import StreamParser
from tokenlat.sidecar import Sidecar
from tokenlat.sidecar.measure import Measurer
from tokenlat.testing import CapturingExporter

CONTENT_CHUNKS = 32
GAP_S = 0.012
PATH = "/v1/chat/completions"
HEADERS = {b"content-type": b"application/json"}  # by lowercase name, as the sidecar hands them over
BODY = b'{"model":"synthetic-model","stream":true,"messages":[{"role":"user","content":"hi"}]}'


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


def _chunk(choices: list[dict[str, Any]], usage: dict[str, int] | None = None) -> bytes:
    return _sse(
        {
            "id": "chatcmpl-synthetic-17",
            "object": "chat.completion.chunk",
            "created": 1764600000,
            "model": "synthetic-model",
            "choices": choices,
            "usage": usage,
        }
    )


def stream_chunks() -> list[bytes]:
    """One stream as the synthetic server writes it, one event a chunk."""
    deltas = [{"role": "assistant", "content": " tok0"}] + [{"content": f" tok{i}"} for i in range(1, CONTENT_CHUNKS)]
    chunks = [_chunk([{"index": 0, "delta": delta, "finish_reason": None}]) for delta in deltas]
    chunks.append(_chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    chunks.append(_chunk([], {"prompt_tokens": 12, "completion_tokens": CONTENT_CHUNKS, "total_tokens": 44}))
    chunks.append(_sse("[DONE]"))
    return chunks


def _measure_streams(measurer: Measurer, chunks: Sequence[bytes], streams: int) -> int:
    at = 1000.0
    for _ in range(streams):
        exchange = measurer.exchange(PATH, HEADERS, at)
        exchange.set_body(BODY)
        exchange.content_type = "text/event-stream"
        measurer.classify(exchange, 200)
        for chunk in chunks:
            at += GAP_S
            exchange.feed(chunk, at)
        exchange.finish(None)
    return streams * len(chunks)


def _parse_only(chunks: Sequence[bytes], streams: int) -> int:
    for _ in range(streams):
        parser = StreamParser("openai")
        for chunk in chunks:
            parser.feed(chunk)
    return streams * len(chunks)


def _json_only(chunks: Sequence[bytes], streams: int) -> int:
    payloads = [chunk[6:-2].decode() for chunk in chunks if chunk.startswith(b"data: {")]
    loads = json.loads
    for _ in range(streams):
        for payload in payloads:
            loads(payload)
    return streams * len(chunks)  # per relayed chunk, as the others


def run(streams: int, repeats: int) -> dict[str, float]:
    """Best CPU microseconds per chunk of each case, the cases interleaved on every repeat."""
    telemetry = configure(
        metric_exporter=CapturingExporter(),
        histogram="exponential",
        exponential_scale=8,
        export_interval_millis=3_600_000,
        environ={},
    )
    measurer = Sidecar("http://127.0.0.1:9", telemetry.metrics).measurer  # never started: nothing listens
    chunks = stream_chunks()
    cases: dict[str, Callable[[], int]] = {
        "measuring (measure .. finish)": lambda: _measure_streams(measurer, chunks, streams),
        "of which parsing (StreamParser.feed)": lambda: _parse_only(chunks, streams),
        "of which json.loads": lambda: _json_only(chunks, streams),
    }
    best = dict.fromkeys(cases, float("inf"))
    try:
        gc.disable()  # garbage collection is the whole process's business; bench.sidecar reports its pauses
        for _ in range(repeats):
            for name, case in cases.items():
                began = time.process_time()
                count = case()
                best[name] = min(best[name], (time.process_time() - began) / count * 1e6)
    finally:
        gc.enable()
        telemetry.shutdown()
    return best


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.measure_path", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=300, help="streams per repeat (default 300)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats; the best counts (default 7)")
    args = parser.parse_args(argv)
    for name, us in run(args.streams, args.repeats).items():
        print(f"{name:40s} {us:6.2f} us per chunk")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
