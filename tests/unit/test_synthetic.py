"""Tests of the synthetic server, the ground truth every end-to-end test leans on.

Servers run in-process on 127.0.0.1 port 0 inside ``asyncio.run`` (no pytest-asyncio), with
millisecond-scale distributions so the whole file stays fast. Timing assertions are lower bounds
only: a server can be late on a loaded machine, but it must never be early.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import random
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import pytest

from tests.conftest import REPO
from tests.subprocesses import read_line, stop
from tokenlat.parsers import StreamParser, decode_payload
from tokenlat.sse import OpenAISSECounter
from tokenlat_cli.verify import synthetic
from tokenlat_cli.verify.synthetic import (
    RECEIVED_AT,
    TOOL_NAME,
    WRITTEN_AT,
    Distribution,
    RequestPlan,
    ServerStats,
    SyntheticConfig,
    create_app,
    plan_request,
    serve,
    token_text,
)

# Slack for comparing the client's clock readings with planned times: the loop clock's
# resolution and rounding, not network delay (which only makes observations later).
SLACK_S = 0.002

FAST = SyntheticConfig(
    seed=7,
    ttft=Distribution.parse("uniform:0.015,0.03"),
    inter_token=Distribution.parse("uniform:0.002,0.006"),
    output_tokens=(4, 10),
)

# A reasoning model that ends with a tool call: about a quarter reasoning, then content, then 3 argument tokens.
THINKING = dataclasses.replace(FAST, reasoning=0.25, tool_call_tokens=3)
KIND_ORDER = ("reasoning", "content", "tool_call")

T = TypeVar("T")


def run(coro_fn: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one async test body in a fresh event loop."""
    return asyncio.run(coro_fn())


@dataclass
class Server:
    url: str
    stats: ServerStats


@asynccontextmanager
async def running(config: SyntheticConfig = FAST) -> AsyncIterator[Server]:
    runner, port = await serve(config, "127.0.0.1", 0)
    try:
        yield Server(f"http://127.0.0.1:{port}", runner.app["stats"])
    finally:
        await runner.cleanup()


def chat_body(text: str = "hello there world", **extra: Any) -> dict[str, Any]:
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]
    return {"messages": messages, **extra}


@dataclass
class Event:
    at: float  # loop clock when the line was read
    data: str

    def json(self) -> dict[str, Any]:
        return json.loads(self.data)


async def read_events(resp: aiohttp.ClientResponse) -> list[Event]:
    """Parse an SSE body into its ``data:`` events, timestamping each as it arrives."""
    loop = asyncio.get_running_loop()
    events: list[Event] = []
    async for raw in resp.content:
        line = raw.decode().rstrip("\r\n")
        if line.startswith("data: "):
            events.append(Event(loop.time(), line.removeprefix("data: ")))
        else:
            assert line == "", f"unexpected SSE line {line!r}"
    return events


@dataclass
class Streamed:
    start: float
    events: list[Event]

    @property
    def chunks(self) -> list[dict[str, Any]]:
        assert self.events[-1].data == "[DONE]"
        return [event.json() for event in self.events[:-1]]

    @property
    def token_events(self) -> list[Event]:
        return [
            e for e, c in zip(self.events[:-1], self.chunks, strict=True) if c["choices"] and c["choices"][0]["delta"]
        ]


async def stream_chat(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Streamed:
    start = asyncio.get_running_loop().time()
    async with session.post(f"{url}/v1/chat/completions", json={**body, "stream": True}) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        return Streamed(start, await read_events(resp))


def index_of(chunk: dict[str, Any]) -> int:
    match = re.fullmatch(r"chatcmpl-synthetic-(\d+)", chunk["id"])
    assert match, chunk["id"]
    return int(match.group(1))


# --------------------------------------------------------------------------- Distribution


@pytest.mark.parametrize(
    ("spec", "kind", "params"),
    [
        ("fixed:0.5", "fixed", (0.5,)),
        ("uniform:0.01,0.02", "uniform", (0.01, 0.02)),
        ("lognormal:0.12,0.35", "lognormal", (0.12, 0.35)),
        ("normal:0.1,0.05", "normal", (0.1, 0.05)),
        (" Uniform: 1 , 2 ", "uniform", (1.0, 2.0)),
    ],
)
def test_parse_each_kind(spec: str, kind: str, params: tuple[float, ...]) -> None:
    dist = Distribution.parse(spec)
    assert (dist.kind, dist.params) == (kind, params)
    assert Distribution.parse(str(dist)) == dist


def test_str_gives_back_the_spec() -> None:
    assert str(Distribution.parse("fixed:5")) == "fixed:5"
    assert str(Distribution.parse("lognormal:0.012,0.3")) == "lognormal:0.012,0.3"
    assert str(SyntheticConfig().ttft) == "lognormal:0.12,0.35"


def test_samples_follow_the_distribution() -> None:
    rng = random.Random(1)
    assert Distribution.parse("fixed:0.25").sample(rng) == 0.25
    uniform = [Distribution.parse("uniform:0.1,0.2").sample(rng) for _ in range(500)]
    assert all(0.1 <= v <= 0.2 for v in uniform)
    lognormal = sorted(Distribution.parse("lognormal:0.12,0.35").sample(rng) for _ in range(2001))
    assert lognormal[1000] == pytest.approx(0.12, rel=0.1)  # the median parameter is the median
    assert all(v > 0 for v in lognormal)
    normal = [Distribution.parse("normal:0.01,0.05").sample(rng) for _ in range(500)]
    assert min(normal) == 0.0  # clamped, and this wide a normal does go below zero
    assert sum(normal) / len(normal) > 0.01


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("bogus:1", "unknown kind 'bogus' (known kinds: fixed, uniform, lognormal, normal)"),
        ("0.5", "unknown kind '0.5'"),
        ("uniform:1", "uniform takes 2 parameter(s) (uniform:LO,HI), got 1"),
        ("fixed:1,2", "fixed takes 1 parameter(s) (fixed:V), got 2"),
        ("fixed:", "fixed takes 1 parameter(s) (fixed:V), got 0"),
        ("lognormal:0.1", "lognormal takes 2 parameter(s) (lognormal:MEDIAN,SIGMA), got 1"),
        ("fixed:abc", "'abc' is not a number"),
        ("normal:0.1,x", "'x' is not a number"),
        ("fixed:-1", "'-1' is negative"),
        ("normal:-0.1,0.2", "'-0.1' is negative"),
        ("fixed:inf", "'inf' is not a finite number"),
        ("fixed:nan", "'nan' is not a finite number"),
        ("uniform:2,1", "LO must not be greater than HI"),
        ("lognormal:0,0.3", "MEDIAN must be greater than 0"),
    ],
)
def test_parse_errors_name_spec_and_reason(spec: str, reason: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        Distribution.parse(spec)
    message = str(excinfo.value)
    assert repr(spec) in message
    assert reason in message


def test_direct_construction_is_validated_too() -> None:
    assert Distribution("fixed", (1,)).params == (1.0,)
    with pytest.raises(ValueError, match="unknown kind 'gamma'"):
        Distribution("gamma", (1.0,))
    with pytest.raises(ValueError, match="must be a finite number >= 0"):
        Distribution("fixed", (-1.0,))


@pytest.mark.parametrize("output_tokens", [(0, 3), (5, 4)])
def test_config_rejects_bad_output_token_range(output_tokens: tuple[int, int]) -> None:
    with pytest.raises(ValueError, match="output_tokens"):
        SyntheticConfig(output_tokens=output_tokens)


# --------------------------------------------------------------------------- plan_request


def test_plan_is_deterministic_per_seed_and_index() -> None:
    plan = plan_request(FAST, 3, None)
    assert plan == plan_request(FAST, 3, None)
    assert plan != plan_request(FAST, 4, None)
    assert plan != plan_request(SyntheticConfig(seed=8, ttft=FAST.ttft, inter_token=FAST.inter_token), 3)
    # Stable across processes too (a str seed is hashed with SHA-512, not hash()).
    code = (
        "from tokenlat_cli.verify.synthetic import Distribution as D, SyntheticConfig, plan_request\n"
        f"config = SyntheticConfig(7, D.parse('{FAST.ttft}'), D.parse('{FAST.inter_token}'), (4, 10))\n"
        "print(repr(plan_request(config, 3, None)))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "123"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == repr(plan)


def test_plan_shape() -> None:
    for index in range(50):
        plan = plan_request(FAST, index)
        assert 4 <= plan.output_tokens <= 10
        assert len(plan.gaps) == plan.output_tokens - 1
        assert 0.015 <= plan.ttft <= 0.03
        assert all(0.002 <= gap <= 0.006 for gap in plan.gaps)
        assert plan.finish_reason == "stop"
        assert plan.offsets[-1] == pytest.approx(plan.total_seconds)


def test_max_tokens_caps_the_plan() -> None:
    full = plan_request(FAST, 0)
    capped = plan_request(FAST, 0, 2)
    assert capped == RequestPlan(full.ttft, full.gaps[:1], 2, "length")
    single = plan_request(FAST, 0, 1)
    assert (single.output_tokens, single.gaps, single.finish_reason) == (1, (), "length")
    # Reaching the drawn length exactly is a natural stop, not a cut.
    assert plan_request(FAST, 0, full.output_tokens) == full
    assert plan_request(FAST, 0, 1000) == full
    with pytest.raises(ValueError, match="max_tokens"):
        plan_request(FAST, 0, 0)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"reasoning": 1.5}, "invalid reasoning"),
        ({"reasoning": -0.1}, "invalid reasoning"),
        ({"reasoning": math.nan}, "invalid reasoning"),
        ({"tool_call_tokens": -1}, "invalid tool_call_tokens"),
    ],
)
def test_config_rejects_bad_token_kinds(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(FAST, **changes)


def test_token_kinds_leave_the_timings_alone() -> None:
    # The kinds are no draw of their own: the plans of a reasoning model and a plain one time every token alike,
    # so verify's ground truth and its ramp hold whatever kinds the server streams.
    for index in range(50):
        plain, thinking = plan_request(FAST, index), plan_request(THINKING, index)
        n = plain.output_tokens
        assert (thinking.ttft, thinking.gaps, thinking.output_tokens) == (plain.ttft, plain.gaps, n)
        assert thinking.reasoning_tokens == round(0.25 * n)
        assert thinking.tool_call_tokens == min(3, n - thinking.reasoning_tokens)
        assert thinking.finish_reason == "tool_calls"
        kinds = [thinking.kind(position) for position in range(n)]
        assert kinds == sorted(kinds, key=KIND_ORDER.index)  # reasoning first, the tool call last
        assert kinds.count("reasoning") == thinking.reasoning_tokens
        assert kinds.count("tool_call") == thinking.tool_call_tokens
        assert plain.kind(0) == "content" and plain.finish_reason == "stop"
        capped = plan_request(THINKING, index, n - 1) if n > 1 else thinking
        assert [capped.kind(p) for p in range(capped.output_tokens)] == kinds[: capped.output_tokens]


def test_a_cut_tool_call_keeps_the_tokens_before_the_cut() -> None:
    full = plan_request(THINKING, 0)
    n = full.output_tokens
    assert full.tool_call_tokens == 3 and n > 4
    assert plan_request(THINKING, 0, n - 1).tool_call_tokens == 2
    assert plan_request(THINKING, 0, n - 3).tool_call_tokens == 0
    capped = plan_request(THINKING, 0, 1)
    assert (capped.reasoning_tokens, capped.tool_call_tokens, capped.finish_reason) == (1, 0, "length")


# --------------------------------------------------------------------------- streaming server


def test_stream_follows_the_plan() -> None:
    async def body() -> None:
        async with running() as server, aiohttp.ClientSession() as session:
            request = chat_body("one two  three\nfour", stream_options={"include_usage": True})
            got = await stream_chat(session, server.url, request)
        plan = plan_request(FAST, 0)
        chunks = got.chunks
        tokens, finish, usage = chunks[: plan.output_tokens], chunks[-2], chunks[-1]
        assert len(chunks) == plan.output_tokens + 2

        for position, chunk in enumerate(tokens):
            assert chunk["object"] == "chat.completion.chunk"
            assert (chunk["id"], chunk["model"]) == ("chatcmpl-synthetic-0", "tokenlat-synthetic")
            assert isinstance(chunk["created"], int)
            (choice,) = chunk["choices"]
            expected = {"content": f"tok{position + 1} "}
            if position == 0:
                expected["role"] = "assistant"
            assert choice == {"index": 0, "delta": expected, "finish_reason": None}
        assert finish["choices"] == [{"index": 0, "delta": {}, "finish_reason": "stop"}]
        assert usage["choices"] == []
        assert not any(WRITTEN_AT in chunk or RECEIVED_AT in chunk for chunk in chunks)  # unless asked for
        # Prompt tokens are words: "be brief" + "one two three four".
        assert usage["usage"] == {
            "prompt_tokens": 6,
            "completion_tokens": plan.output_tokens,
            "total_tokens": 6 + plan.output_tokens,
        }

        # The server never sends a token before its planned time. Tokens are scheduled at
        # absolute offsets (no drift), so compare cumulative times rather than single gaps:
        # a late token legitimately shortens the gap after it.
        arrivals = [event.at - got.start for event in got.token_events]
        assert len(arrivals) == plan.output_tokens
        for arrival, offset in zip(arrivals, plan.offsets, strict=True):
            assert arrival >= offset - SLACK_S
        assert arrivals[0] >= plan.ttft - SLACK_S
        assert got.events[-1].at - got.start >= plan.total_seconds

    run(body)


def test_stamped_chunks_carry_their_write_times_in_order_after_the_receipt() -> None:
    async def body() -> list[dict[str, Any]]:
        async with running(dataclasses.replace(FAST, stamp_writes=True)) as server, aiohttp.ClientSession() as session:
            request = chat_body(stream_options={"include_usage": True})
            return (await stream_chat(session, server.url, request)).chunks

    chunks = run(body)
    written = [chunk[WRITTEN_AT] for chunk in chunks]  # verify's truth through the sidecar (test_verify_load)
    assert len(chunks) == plan_request(FAST, 0).output_tokens + 2
    assert all(isinstance(stamp, float) for stamp in written) and written == sorted(written)
    (received,) = {chunk[RECEIVED_AT] for chunk in chunks}  # one request, received once
    assert isinstance(received, float) and received < written[0]


def _read_thinking_stream(chunks: list[dict[str, Any]]) -> tuple[list[str], list[str], str]:
    """The kinds and texts of a reasoning + tool-call stream's tokens, read field by field, and its arguments."""
    kinds: list[str] = []
    texts: list[str] = []
    arguments = ""
    for chunk in chunks:
        if not chunk["choices"] or not chunk["choices"][0]["delta"]:
            continue
        delta = dict(chunk["choices"][0]["delta"])
        delta.pop("role", None)
        ((field, value),) = delta.items()
        if field == "tool_calls":
            (call,) = value
            if "id" in call:  # the call's header: no token
                assert call == {
                    "index": 0,
                    "id": f"call_synthetic_{index_of(chunk)}",
                    "type": "function",
                    "function": {"name": TOOL_NAME, "arguments": ""},
                }
                continue
            assert call["index"] == 0 and set(call) == {"index", "function"}
            field, value = "tool_call", call["function"]["arguments"]
            arguments += value
        kinds.append({"reasoning_content": "reasoning"}.get(field, field))
        texts.append(value)
    return kinds, texts, arguments


def test_stream_as_a_reasoning_model_with_a_tool_call() -> None:
    async def body() -> None:
        async with running(THINKING) as server, aiohttp.ClientSession() as session:
            got = await stream_chat(session, server.url, chat_body(stream_options={"include_usage": True}))
        plan = plan_request(THINKING, 0)
        n = plan.output_tokens
        chunks = got.chunks
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        kinds, texts, arguments = _read_thinking_stream(chunks)
        assert kinds == [plan.kind(position) for position in range(n)]
        assert {"reasoning", "content", "tool_call"} <= set(kinds)
        spoken = [text for text, kind in zip(texts, kinds, strict=True) if kind != "tool_call"]
        assert spoken == [token_text(p) for p in range(n) if plan.kind(p) != "tool_call"]
        tool_positions = [p for p in range(n) if plan.kind(p) == "tool_call"]
        assert json.loads(arguments) == {"query": "".join(token_text(p) for p in tool_positions)}
        assert chunks[-2]["choices"] == [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]
        usage = chunks[-1]["usage"]
        assert usage["completion_tokens"] == n and usage["total_tokens"] == usage["prompt_tokens"] + n
        assert usage["completion_tokens_details"] == {"reasoning_tokens": plan.reasoning_tokens}

        # The sidecar's parser and the library's counter count every kind: as many tokens as the usage report.
        body_bytes = b"".join(f"data: {event.data}\n\n".encode() for event in got.events)
        parser = StreamParser("openai")
        assert sum(event.tokens for event in parser.feed(body_bytes)) == n
        assert OpenAISSECounter()(body_bytes) == (n, (usage["prompt_tokens"], n))

        # Each token, whatever its kind, goes out at its planned time, never before.
        arrivals = [
            event.at - got.start
            for event in got.events[:-1]
            for _ in range(decode_payload("openai", event.json()).tokens)  # type: ignore[union-attr]
        ]
        assert len(arrivals) == n
        for arrival, offset in zip(arrivals, plan.offsets, strict=True):
            assert arrival >= offset - SLACK_S

    run(body)


def test_stream_without_usage_and_capped_by_max_tokens() -> None:
    async def body() -> None:
        async with running() as server, aiohttp.ClientSession() as session:
            got = await stream_chat(session, server.url, chat_body(max_tokens=2, model="my-model"))
        chunks = got.chunks
        assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["tok1 ", "tok2 ", None]
        assert chunks[-1]["choices"][0]["finish_reason"] == "length"
        assert all("usage" not in c for c in chunks)
        assert {c["model"] for c in chunks} == {"my-model"}

    run(body)


def test_concurrent_requests_each_get_the_plan_of_their_index() -> None:
    async def body() -> None:
        async with running() as server, aiohttp.ClientSession() as session:
            results = await asyncio.gather(*(stream_chat(session, server.url, chat_body()) for _ in range(6)))
            assert (server.stats.started, server.stats.completed, server.stats.disconnected) == (6, 6, 0)
        indices = sorted(index_of(r.chunks[0]) for r in results)
        assert indices == list(range(6))
        for result in results:
            plan = plan_request(FAST, index_of(result.chunks[0]))
            assert len(result.token_events) == plan.output_tokens

    run(body)


def test_non_streaming_completion() -> None:
    async def body() -> None:
        async with running() as server, aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            for index, max_tokens in enumerate([None, 3]):
                start = loop.time()
                async with session.post(
                    f"{server.url}/v1/chat/completions", json=chat_body(max_tokens=max_tokens)
                ) as resp:
                    assert resp.status == 200
                    reply = await resp.json()
                elapsed = loop.time() - start
                plan = plan_request(FAST, index, max_tokens)
                assert elapsed >= plan.total_seconds - SLACK_S
                assert reply["object"] == "chat.completion"
                assert reply["id"] == f"chatcmpl-synthetic-{index}"
                (choice,) = reply["choices"]
                words = [f"tok{i}" for i in range(1, plan.output_tokens + 1)]
                assert choice["message"] == {"role": "assistant", "content": " ".join(words) + " "}
                assert choice["finish_reason"] == ("length" if max_tokens else "stop")
                assert reply["usage"] == {
                    "prompt_tokens": 5,
                    "completion_tokens": plan.output_tokens,
                    "total_tokens": 5 + plan.output_tokens,
                }

    run(body)


def test_non_streaming_completion_of_a_reasoning_model() -> None:
    async def body() -> None:
        async with running(THINKING) as server, aiohttp.ClientSession() as session:
            for index, max_tokens in enumerate([None, plan_request(THINKING, 1).output_tokens - 1]):
                async with session.post(
                    f"{server.url}/v1/chat/completions", json=chat_body(max_tokens=max_tokens)
                ) as resp:
                    reply = await resp.json()
                plan = plan_request(THINKING, index, max_tokens)
                texts = {kind: "".join(token_text(p) for p in range(plan.output_tokens) if plan.kind(p) == kind)
                         for kind in KIND_ORDER}  # fmt: skip
                (choice,) = reply["choices"]
                message = choice["message"]
                assert message["reasoning_content"] == texts["reasoning"]
                assert message["content"] == (texts["content"] or None)
                (call,) = message["tool_calls"]
                assert call["function"]["name"] == TOOL_NAME
                closing = '"}' if max_tokens is None else ""  # cut short, the arguments stay unfinished
                assert call["function"]["arguments"] == '{"query": "' + texts["tool_call"] + closing
                assert choice["finish_reason"] == ("length" if max_tokens else "tool_calls")
                assert reply["usage"]["completion_tokens"] == plan.output_tokens

    run(body)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "must be a JSON object"),
        (b"{}", "'messages' must be a non-empty list"),
        (b'{"messages": []}', "'messages' must be a non-empty list"),
        (b'{"messages": "hi"}', "'messages' must be a non-empty list"),
        (b'{"messages": ["hi"]}', "messages[0] must be an object"),
        (b'{"messages": [{"content": "hi"}]}', "messages[0].role must be a string"),
        (b'{"messages": [{"role": "user", "content": 5}]}', "messages[0].content"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "stream": "yes"}', "'stream' must be a boolean"),
        (b'{"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}', "'max_tokens' must be"),
    ],
)
def test_bad_requests_get_openai_style_400(payload: bytes, message: str) -> None:
    async def body() -> None:
        async with running() as server, aiohttp.ClientSession() as session:
            headers = {"Content-Type": "application/json"}
            async with session.post(f"{server.url}/v1/chat/completions", data=payload, headers=headers) as resp:
                assert resp.status == 400
                error = (await resp.json())["error"]
            assert error["type"] == "invalid_request_error"
            assert message in error["message"]
            assert (server.stats.started, server.stats.rejected) == (0, 1)
            # A rejected request takes no index: the next good one is still request 0.
            got = await stream_chat(session, server.url, chat_body())
            assert index_of(got.chunks[0]) == 0

    run(body)


def test_healthz_and_models() -> None:
    async def body() -> None:
        config = SyntheticConfig(model="unit-model", ttft=FAST.ttft, inter_token=FAST.inter_token)
        async with running(config) as server, aiohttp.ClientSession() as session:
            async with session.get(f"{server.url}/healthz") as resp:
                assert (resp.status, await resp.text()) == (200, "ok")
            async with session.get(f"{server.url}/v1/models") as resp:
                models = await resp.json()
            assert models["object"] == "list"
            assert [m["id"] for m in models["data"]] == ["unit-model"]
            async with session.post(f"{server.url}/v1/chat/completions", json=chat_body(max_tokens=1)) as resp:
                assert (await resp.json())["model"] == "unit-model"

    run(body)


def test_create_app_exposes_stats() -> None:
    app = create_app(FAST)
    assert app["stats"] == ServerStats()


def test_client_disconnect_leaves_server_healthy(caplog: pytest.LogCaptureFixture) -> None:
    slow = SyntheticConfig(
        ttft=Distribution.parse("fixed:0.005"),
        inter_token=Distribution.parse("fixed:0.01"),
        output_tokens=(40, 40),
    )

    async def wait_for_disconnects(stats: ServerStats, count: int) -> None:
        deadline = time.monotonic() + 5
        while stats.disconnected < count:
            assert time.monotonic() < deadline, f"server never noticed the disconnect: {stats}"
            await asyncio.sleep(0.01)

    async def body() -> None:
        async with running(slow) as server, aiohttp.ClientSession() as session:
            url = f"{server.url}/v1/chat/completions"
            # Streaming: read one chunk, then drop the connection.
            resp = await session.post(url, json=chat_body(stream=True))
            assert (await resp.content.readline()).startswith(b"data: ")
            resp.close()
            await wait_for_disconnects(server.stats, 1)
            # Non-streaming: give up long before the 0.4 s the reply takes.
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(session.post(url, json=chat_body()), 0.05)
            await wait_for_disconnects(server.stats, 2)

            got = await stream_chat(session, server.url, chat_body(max_tokens=3))
            assert len(got.token_events) == 3
            assert (server.stats.started, server.stats.completed, server.stats.disconnected) == (3, 1, 2)

    with caplog.at_level(logging.DEBUG):
        run(body)
    noisy = [r for r in caplog.records if r.exc_info or r.levelno >= logging.WARNING]
    assert not noisy, [r.getMessage() for r in noisy]


# --------------------------------------------------------------------------- command line


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tokenlat_cli.verify.synthetic", *args]


@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM handling is POSIX-only")
def test_cli_prints_listening_line_and_stops_on_sigterm() -> None:
    args = cli("--host", "127.0.0.1", "--port", "0", "--seed", "3", "--ttft", "fixed:0.001")
    args += ["--inter-token", "fixed:0.001", "--output-tokens", "2-3", "--model", "cli-model"]
    args += ["--reasoning", "0.5", "--tool-call-tokens", "1", "--stamp-writes"]
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = read_line(proc, timeout=20)
        match = re.fullmatch(r"tokenlat-synthetic listening on (http://127\.0\.0\.1:(\d+))\n", line)
        assert match, line
        assert int(match.group(2)) > 0
        with urllib.request.urlopen(f"{match.group(1)}/v1/models", timeout=5) as resp:
            assert json.load(resp)["data"][0]["id"] == "cli-model"
        request = urllib.request.Request(
            f"{match.group(1)}/v1/chat/completions",
            data=json.dumps(chat_body(stream=True)).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            streamed = resp.read().decode()
        assert '"reasoning_content":"tok1 "' in streamed and f'"name":"{TOOL_NAME}"' in streamed
        chunks = streamed.count('"object":"chat.completion.chunk"')
        assert streamed.count(f'"{WRITTEN_AT}":') == streamed.count(f'"{RECEIVED_AT}":') == chunks
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert proc.stdout is not None and proc.stdout.read() == ""  # exactly one line
        assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    finally:
        stop(proc)


def test_cli_bad_ttft_exits_2_naming_the_option() -> None:
    out = subprocess.run(cli("--ttft", "bogus:1"), cwd=REPO, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "--ttft" in out.stderr
    assert "unknown kind 'bogus'" in out.stderr
    assert out.stdout == ""


@pytest.mark.parametrize(
    ("args", "option", "reason"),
    [
        (["--inter-token", "uniform:1"], "--inter-token", "takes 2 parameter(s)"),
        (["--output-tokens", "9-3"], "--output-tokens", "need 1 <= LO <= HI"),
        (["--output-tokens", "a-b"], "--output-tokens", "not N or LO-HI"),
        (["--port", "70000"], "--port", "outside 0-65535"),
        (["--seed", "x"], "--seed", "invalid int value"),
        (["--reasoning", "1.5"], "--reasoning", "not a share between 0 and 1"),
        (["--reasoning", "lots"], "--reasoning", "not a number"),
        (["--tool-call-tokens", "-1"], "--tool-call-tokens", "-1 is outside 0-"),
    ],
)
def test_cli_bad_arguments_exit_2(
    args: list[str], option: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as excinfo:
        synthetic.main(args)
    assert excinfo.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err
    assert reason in err
