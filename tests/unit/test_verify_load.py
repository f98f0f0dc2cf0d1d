"""verify's load against an in-process synthetic server streaming as a reasoning model with a tool call.

The load's truth is read from the server's token texts, apart from the library's counting: so the two agree when
the library counts every kind of token, and a library that misses one differs from the truth (which verify
reports) instead of agreeing with a truth counted by the same function.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.otel_helpers import MODEL, Pipeline, point
from tokenlat import parsers, semconv
from tokenlat.stream import RequestTiming, TokenMetrics
from tokenlat_cli.verify import services, synthetic
from tokenlat_cli.verify.load import SYNTHETIC_SERVER_ARGS, LoadResult, run_load, synthetic_tokens, truth_series
from tokenlat_cli.verify.synthetic import RECEIVED_AT, WRITTEN_AT, Distribution, SyntheticConfig, plan_request

TOTAL = 12
# The shape verify gives its model server (SYNTHETIC_SERVER_ARGS), with millisecond timings.
_SHAPE = synthetic._build_parser().parse_args(list(SYNTHETIC_SERVER_ARGS))
CONFIG = SyntheticConfig(
    seed=3,
    ttft=Distribution.parse("uniform:0.005,0.01"),
    inter_token=Distribution.parse("uniform:0.001,0.003"),
    output_tokens=(8, 16),
    reasoning=_SHAPE.reasoning,
    tool_call_tokens=_SHAPE.tool_call_tokens,
    stamp_writes=_SHAPE.stamp_writes,
)
PLANNED = sum(plan_request(CONFIG, index).output_tokens for index in range(TOTAL))
OUTPUT = {semconv.GEN_AI_TOKEN_TYPE: "output"}


def test_verify_streams_reasoning_and_a_tool_call() -> None:
    assert CONFIG.reasoning > 0 and CONFIG.tool_call_tokens > 0
    plan = plan_request(CONFIG, 0)
    assert {plan.kind(position) for position in range(plan.output_tokens)} == {"reasoning", "content", "tool_call"}


def test_verify_starts_its_model_server_with_that_shape(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    started: list[list[str]] = []
    monkeypatch.setattr(services, "start_listening", lambda group, name, argv, *rest, **kw: started.append(argv))
    services.start_synthetic(None, tmp_path, ["--seed=5"])  # type: ignore[arg-type]
    (argv,) = started
    assert argv[argv.index("--seed=5") - len(SYNTHETIC_SERVER_ARGS) :] == [*SYNTHETIC_SERVER_ARGS, "--seed=5"]


def _load(metrics: TokenMetrics | None) -> LoadResult:
    """The load against an in-process synthetic server, measured by ``metrics`` (None: as through the sidecar)."""

    async def body() -> LoadResult:
        runner, port = await synthetic.serve(CONFIG)
        try:
            return await run_load(f"http://127.0.0.1:{port}", TOTAL, 4, metrics, MODEL, "m", seed=3)
        finally:
            await runner.cleanup()

    return asyncio.run(body())


def _measured_here(pipeline: Pipeline) -> LoadResult:
    pipeline.metrics.clock = time.perf_counter  # the load starts each request's clock with perf_counter
    return _load(pipeline.metrics)


def _rewrite_chunks(monkeypatch: pytest.MonkeyPatch, rewrite: Callable[[dict[str, Any]], object]) -> None:
    """Every chunk the synthetic server streams passes through ``rewrite`` just after it is stamped."""
    made = synthetic._Reply._chunk

    def rewritten(reply: synthetic._Reply, **fields: Any) -> dict[str, Any]:
        chunk = made(reply, **fields)
        rewrite(chunk)
        return chunk

    monkeypatch.setattr(synthetic._Reply, "_chunk", rewritten)


def test_truth_and_library_count_every_kind_of_token(pipeline: Pipeline) -> None:
    result = _measured_here(pipeline)
    assert not result.failures
    assert result.output_tokens == PLANNED  # the truth, checked against the usage report by the load itself
    m = pipeline.collect()
    assert point(m, semconv.TOKEN_USAGE, **OUTPUT).sum == PLANNED
    assert point(m, semconv.INTER_TOKEN_LATENCY).count == len(result.gaps) == PLANNED - TOTAL
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).count == TOTAL


def test_a_library_that_misses_reasoning_differs_from_the_truth(
    pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The counting issue 9 found in the in-process path: only some delta fields count.
    monkeypatch.setattr(parsers, "_OPENAI_DELTA_TEXT", ("content",))
    result = _measured_here(pipeline)
    assert not result.failures and result.output_tokens == PLANNED  # the truth does not lean on the library
    m = pipeline.collect()
    assert point(m, semconv.TOKEN_USAGE, **OUTPUT).sum < PLANNED
    true_ttft = sum(truth.first_token - truth.start for truth in result.truths)  # type: ignore[operator]
    assert point(m, semconv.TIME_TO_FIRST_TOKEN).sum > true_ttft  # the first (reasoning) tokens were missed


def test_measured_outside_a_tokens_truth_is_its_write_by_the_server(monkeypatch: pytest.MonkeyPatch) -> None:
    streamed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    _rewrite_chunks(monkeypatch, lambda chunk: streamed[chunk["id"]].append(chunk))
    result = _load(None)
    assert not result.failures and len(result.truths) == TOTAL
    firsts, gaps, ends = [], [], []
    for chunks in streamed.values():
        written = [c[WRITTEN_AT] for c in chunks if synthetic_tokens(json.dumps(c))]  # one token a chunk
        firsts.append(written[0])
        gaps.extend(later - earlier for earlier, later in itertools.pairwise(written))
        ends.append(chunks[-1][WRITTEN_AT])  # the usage chunk
    # Exactly the server's stamps (JSON carries a float unchanged), not this process's readings.
    assert sorted(t.first_token for t in result.truths) == sorted(firsts)  # type: ignore[type-var]
    assert sorted(t.end for t in result.truths) == sorted(ends)  # type: ignore[type-var]
    assert sorted(result.gaps) == sorted(gaps)


def test_measured_outside_each_value_lies_between_the_servers_stamps_and_this_clients_reads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    streamed: dict[str, list[dict[str, Any]]] = defaultdict(list)
    _rewrite_chunks(monkeypatch, lambda chunk: streamed[chunk["id"]].append(chunk))
    result = _load(None)
    assert not result.failures and result.bounds is not None
    points = truth_series(result.truths) | {semconv.INTER_TOKEN_LATENCY: result.gaps}
    for spec in (semconv.TTFT_SPEC, semconv.TPOT_SPEC, semconv.DURATION_SPEC, semconv.ITL_SPEC):
        low, high, point = result.bounds.low[spec.name], result.bounds.high[spec.name], points[spec.name]
        assert len(low) == len(high) == len(point) > 0, spec.name
        assert all(a <= b <= c for a, b, c in zip(low, point, high, strict=True)), spec.name
        assert any(a < c for a, c in zip(low, high, strict=True)), spec.name  # this client reads after the write
    # The least TTFT the sidecar can see: the first token's write less the server's receipt of the request.
    least = [
        next(c[WRITTEN_AT] for c in chunks if synthetic_tokens(json.dumps(c))) - chunks[0][RECEIVED_AT]
        for chunks in streamed.values()
    ]
    assert sorted(result.bounds.low[semconv.TIME_TO_FIRST_TOKEN]) == sorted(least)


@pytest.mark.parametrize(
    "rewrite",
    [
        lambda chunk: chunk.update({RECEIVED_AT: chunk[WRITTEN_AT] + 0.001}),  # received after it wrote
        lambda chunk: chunk.update({WRITTEN_AT: chunk[WRITTEN_AT] + 1000.0}),  # ahead of this process's clock
        lambda chunk: chunk.update({WRITTEN_AT: chunk[WRITTEN_AT] - 1000.0}),  # before the request started
        lambda chunk: chunk.pop(WRITTEN_AT),  # not verify's model server
    ],
    ids=["received-after-written", "ahead", "before-the-start", "missing"],
)
def test_measured_outside_a_write_time_off_this_clock_fails_the_request(
    monkeypatch: pytest.MonkeyPatch, rewrite: Callable[[dict[str, Any]], object]
) -> None:
    _rewrite_chunks(monkeypatch, rewrite)
    result = _load(None)
    assert not result.truths and len(result.failures) == TOTAL
    assert all(WRITTEN_AT in failure and "not one clock" in failure for failure in result.failures)


def test_the_truth_reads_token_texts_from_any_field() -> None:
    chunk = '{"id":"chatcmpl-synthetic-3","model":"tokenlat-synthetic","choices":[{"index":0,"delta":{%s}}]}'
    assert synthetic_tokens(chunk % '"reasoning_content":"tok12 "') == [12]
    assert synthetic_tokens(chunk % '"role":"assistant","content":"tok1 "') == [1]
    arguments = '"tool_calls":[{"index":0,"function":{"arguments":"{\\"query\\": \\"tok7 "}}]'
    assert synthetic_tokens(chunk % arguments) == [7]
    header = '"tool_calls":[{"index":0,"id":"call_synthetic_3","type":"function","function":{"name":"lookup"}}]'
    assert synthetic_tokens(chunk % header) == []
    assert synthetic_tokens('{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":16}}') == []


def test_truth_series_leaves_undefined_tpot_out() -> None:
    one_token = RequestTiming(start=0.0, first_token=0.5, end=0.5, output_tokens=1)
    three = RequestTiming(start=0.0, first_token=0.25, end=1.25, output_tokens=3)
    series = truth_series([one_token, three])
    assert series[semconv.TIME_TO_FIRST_TOKEN] == [0.5, 0.25]
    assert series[semconv.TIME_PER_OUTPUT_TOKEN] == [0.5]
    assert series[semconv.REQUEST_DURATION] == [0.5, 1.25]
