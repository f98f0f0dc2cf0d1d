"""A synthetic OpenAI-compatible streaming model server.

This is the ground truth of the end-to-end tests: every request's timing (time to
first token, gaps between tokens) and size are drawn from seeded distributions, so a
test can recompute exactly what the server *meant* to do (:func:`plan_request`) and
compare it with what the measuring pipeline reported.

It can stream as a reasoning model with tools does (``SyntheticConfig.reasoning`` and
``tool_call_tokens``): the first tokens as ``delta.reasoning_content``, the last ones as
the streamed arguments of a tool call. Every token, whatever its kind, carries the text
:func:`token_text` of its position, goes out at its planned time, and counts in the usage
report; so a measurement that misses a kind is caught against the plan.

Run it standalone with ``python -m tokenlat_cli.verify.synthetic --port 0``; it prints one line
``tokenlat-synthetic listening on http://HOST:PORT`` once it accepts connections.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import math
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.log import access_logger

from tokenlat import listening

__all__ = [
    "DEFAULT_MODEL",
    "LISTENING_PREFIX",
    "RECEIVED_AT",
    "TOOL_NAME",
    "WRITTEN_AT",
    "Distribution",
    "RequestPlan",
    "ServerStats",
    "SyntheticConfig",
    "create_app",
    "main",
    "plan_request",
    "serve",
    "token_text",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "tokenlat-synthetic"
#: Callers wait for a stdout line starting with this before talking to the server.
LISTENING_NAME = "tokenlat-synthetic"
LISTENING_PREFIX = listening.prefix(LISTENING_NAME)
#: The function a tool-calling reply calls; its arguments are ``{"query": "<the tool-call tokens' text>"}``.
TOOL_NAME = "lookup"
#: With ``SyntheticConfig.stamp_writes``, the key under which every streamed chunk carries the server's
#: ``time.perf_counter()`` as it was written. On Linux that is CLOCK_MONOTONIC, one clock for every process of the
#: host: verify times a token by its write when the measurement is a hop away, where its own reading would add delays
#: the measurement cannot see (verify.load).
WRITTEN_AT = "tokenlat_written_at"
#: Beside :data:`WRITTEN_AT`, the same clock as the request's handler began, after the request's head had arrived:
#: the latest a measurement a hop before this server can have started the request's clock.
RECEIVED_AT = "tokenlat_received_at"

# How long a stopping server lets in-flight streams finish before cancelling them.
# Synthetic streams are cheap to abandon, and a SIGTERM should not hang for aiohttp's
# default of 60 s.
_SHUTDOWN_TIMEOUT_S = 1.0


# --------------------------------------------------------------------------- distributions


def _format_number(value: float) -> str:
    """Shortest text that parses back to the same float ("5" rather than "5.0")."""
    return str(int(value)) if value.is_integer() else repr(value)


def _parse_number(spec: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid distribution {spec!r}: {text.strip()!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"invalid distribution {spec!r}: {text.strip()!r} is not a finite number")
    if value < 0:
        raise ValueError(f"invalid distribution {spec!r}: {text.strip()!r} is negative")
    return value


def _sample_lognormal(rng: random.Random, median: float, sigma: float) -> float:
    # The median of a log-normal distribution is exp(mu), so mu = ln(median).
    return rng.lognormvariate(math.log(median), sigma)


def _sample_normal(rng: random.Random, mean: float, stddev: float) -> float:
    # Durations cannot be negative; clamping keeps the mean close for small stddev.
    return max(0.0, rng.normalvariate(mean, stddev))


# kind -> (parameter names, sampler). The names make error messages self-explanatory.
_KINDS: dict[str, tuple[tuple[str, ...], Callable[..., float]]] = {
    "fixed": (("V",), lambda rng, v: v),
    "uniform": (("LO", "HI"), lambda rng, lo, hi: rng.uniform(lo, hi)),
    "lognormal": (("MEDIAN", "SIGMA"), _sample_lognormal),
    "normal": (("MEAN", "STDDEV"), _sample_normal),
}

_KNOWN_KINDS = "known kinds: " + ", ".join(_KINDS)


@dataclass(frozen=True)
class Distribution:
    """A random distribution of non-negative values (seconds, usually).

    Written as a short spec so that it fits on a command line and in test ids:
    ``fixed:V``, ``uniform:LO,HI``, ``lognormal:MEDIAN,SIGMA`` (median of the values,
    sigma of the underlying normal) or ``normal:MEAN,STDDEV`` (clamped at 0).
    """

    kind: str
    params: tuple[float, ...]

    def __post_init__(self) -> None:
        # Validate here too, so a Distribution built directly is as safe as a parsed one.
        try:
            params = tuple(float(p) for p in self.params)
        except (TypeError, ValueError):
            raise ValueError(f"invalid distribution {self.kind}:{self.params!r}: parameters must be numbers") from None
        object.__setattr__(self, "params", params)  # frozen: normalise ints to floats once
        spec = str(self)
        if self.kind not in _KINDS:
            raise ValueError(f"invalid distribution {spec!r}: unknown kind {self.kind!r} ({_KNOWN_KINDS})")
        names = _KINDS[self.kind][0]
        if len(self.params) != len(names):
            raise ValueError(
                f"invalid distribution {spec!r}: {self.kind} takes {len(names)} "
                f"parameter(s) ({self.kind}:{','.join(names)}), got {len(self.params)}"
            )
        for value in self.params:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"invalid distribution {spec!r}: {value!r} must be a finite number >= 0")
        if self.kind == "uniform" and self.params[0] > self.params[1]:
            raise ValueError(f"invalid distribution {spec!r}: LO must not be greater than HI")
        if self.kind == "lognormal" and self.params[0] <= 0:
            raise ValueError(f"invalid distribution {spec!r}: MEDIAN must be greater than 0")

    @classmethod
    def parse(cls, spec: str) -> Distribution:
        """Parse ``KIND:P1[,P2]``; raises :class:`ValueError` naming the spec and the reason."""
        kind, sep, rest = spec.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in _KINDS:
            raise ValueError(f"invalid distribution {spec!r}: unknown kind {kind!r} ({_KNOWN_KINDS})")
        names = _KINDS[kind][0]
        texts = rest.split(",") if sep and rest.strip() else []
        if len(texts) != len(names):
            raise ValueError(
                f"invalid distribution {spec!r}: {kind} takes {len(names)} parameter(s) "
                f"({kind}:{','.join(names)}), got {len(texts)}"
            )
        return cls(kind, tuple(_parse_number(spec, text) for text in texts))

    def sample(self, rng: random.Random) -> float:
        """Draw one value using ``rng`` (callers own the RNG, which keeps draws reproducible)."""
        return float(_KINDS[self.kind][1](rng, *self.params))

    def __str__(self) -> str:
        return f"{self.kind}:{','.join(_format_number(p) for p in self.params)}"


# --------------------------------------------------------------------------- config and plans


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines what the server does; same config => same responses."""

    seed: int = 0
    ttft: Distribution = field(default_factory=lambda: Distribution.parse("lognormal:0.12,0.35"))
    inter_token: Distribution = field(default_factory=lambda: Distribution.parse("lognormal:0.012,0.3"))
    #: Inclusive range of the drawn completion length.
    output_tokens: tuple[int, int] = (16, 48)
    model: str = DEFAULT_MODEL
    #: Share of each completion's tokens (rounded) that go out first as ``delta.reasoning_content``, as a
    #: reasoning model thinks before it answers.
    reasoning: float = 0.0
    #: Tokens at the end of each completion that go out as the arguments of one tool call, a chunk per token
    #: (fewer when the completion is shorter); 0: no tool call.
    tool_call_tokens: int = 0
    #: Stamp every streamed chunk with the server's clock as it is written (:data:`WRITTEN_AT`) and as the request
    #: was received (:data:`RECEIVED_AT`); off, the chunks are as OpenAI streams them.
    stamp_writes: bool = False

    def __post_init__(self) -> None:
        lo, hi = self.output_tokens
        if not 1 <= lo <= hi:
            raise ValueError(f"invalid output_tokens {self.output_tokens!r}: need 1 <= LO <= HI")
        if not 0.0 <= self.reasoning <= 1.0:  # also rejects NaN
            raise ValueError(f"invalid reasoning {self.reasoning!r}: need a share between 0 and 1")
        if self.tool_call_tokens < 0:
            raise ValueError(f"invalid tool_call_tokens {self.tool_call_tokens!r}: need 0 or more")


@dataclass(frozen=True)
class RequestPlan:
    """What the server will do for one request: the ground truth tests compare against."""

    ttft: float
    #: Seconds between consecutive tokens; ``len(gaps) == output_tokens - 1``.
    gaps: tuple[float, ...]
    output_tokens: int
    #: "length" when the request's max_tokens cut the drawn completion short, "tool_calls" when it ends in one.
    finish_reason: str = "stop"
    #: The first ``reasoning_tokens`` tokens are reasoning, the last ``tool_call_tokens`` a tool call's arguments,
    #: the rest content.
    reasoning_tokens: int = 0
    tool_call_tokens: int = 0

    def kind(self, position: int) -> str:
        """What the token at 0-based ``position`` is: "reasoning", "content" or "tool_call"."""
        if position < self.reasoning_tokens:
            return "reasoning"
        if position >= self.output_tokens - self.tool_call_tokens:
            return "tool_call"
        return "content"

    @property
    def offsets(self) -> list[float]:
        """Seconds from the start of the request to each token."""
        offsets = [self.ttft]
        for gap in self.gaps:
            offsets.append(offsets[-1] + gap)
        return offsets

    @property
    def total_seconds(self) -> float:
        return self.ttft + sum(self.gaps)


def plan_request(config: SyntheticConfig, index: int, max_tokens: int | None = None) -> RequestPlan:
    """Draw the plan of the ``index``-th request (0-based) served with ``config``.

    Each request gets its own RNG seeded from (seed, index), so the N-th request has the
    same plan whatever the concurrency. The full drawn completion's timings are drawn
    before ``max_tokens`` is applied, so a capped plan is a prefix of the uncapped one.
    The kinds of the tokens follow from the drawn length alone, with no draw of their
    own: the timings are the same whether the server streams reasoning and tool calls or not.
    """
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    # A str seed goes through SHA-512, which is stable across runs and Python versions.
    rng = random.Random(f"tokenlat-synthetic:{config.seed}:{index}")
    drawn = rng.randint(*config.output_tokens)
    ttft = config.ttft.sample(rng)
    gaps = [config.inter_token.sample(rng) for _ in range(drawn - 1)]
    reasoning = round(config.reasoning * drawn)
    tool_call = min(config.tool_call_tokens, drawn - reasoning)
    if max_tokens is not None and max_tokens < drawn:
        # The prefix: reasoning as far as it goes, and only the part of the tool call before the cut.
        kept_tool_call = max(0, tool_call - (drawn - max_tokens))
        return RequestPlan(
            ttft, tuple(gaps[: max_tokens - 1]), max_tokens, "length", min(reasoning, max_tokens), kept_tool_call
        )
    return RequestPlan(ttft, tuple(gaps), drawn, "tool_calls" if tool_call else "stop", reasoning, tool_call)


def token_text(position: int) -> str:
    """Text of the token at 0-based ``position``: "tok1 ", "tok2 ", ..."""
    return f"tok{position + 1} "


# --------------------------------------------------------------------------- request parsing


class _BadRequest(Exception):
    """A client error reported as an OpenAI-style 400 response."""


@dataclass(frozen=True)
class _ChatRequest:
    prompt_tokens: int
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None


def _content_words(content: Any, where: str) -> int:
    """Whitespace-separated words in a message content (a string or a list of text parts)."""
    if content is None:  # e.g. an assistant message that only carried tool calls
        return 0
    if isinstance(content, str):
        return len(content.split())
    if isinstance(content, list):
        words = 0
        for part in content:
            text = part.get("text") if isinstance(part, dict) else None
            if not isinstance(text, str):
                raise _BadRequest(f"{where}.content parts must be objects with a string 'text'")
            words += len(text.split())
        return words
    raise _BadRequest(f"{where}.content must be a string or a list of text parts")


def _count_prompt_tokens(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty list")
    words = 0
    for i, message in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(message, dict):
            raise _BadRequest(f"{where} must be an object")
        if not isinstance(message.get("role"), str):
            raise _BadRequest(f"{where}.role must be a string")
        words += _content_words(message.get("content"), where)
    return words


def _optional_max_tokens(body: dict[str, Any]) -> int | None:
    # Newer OpenAI clients send max_completion_tokens; older ones max_tokens.
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _BadRequest(f"'{key}' must be an integer >= 1")
        return value
    return None


def _parse_chat_request(body: Any, default_model: str) -> _ChatRequest:
    if not isinstance(body, dict):
        raise _BadRequest("request body must be a JSON object")
    prompt_tokens = _count_prompt_tokens(body.get("messages"))
    model = body.get("model") or default_model
    if not isinstance(model, str):
        raise _BadRequest("'model' must be a string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _BadRequest("'stream' must be a boolean")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict) or not isinstance(options.get("include_usage", False), bool):
        raise _BadRequest("'stream_options' must be an object with a boolean 'include_usage'")
    return _ChatRequest(
        prompt_tokens=prompt_tokens,
        model=model,
        stream=stream,
        include_usage=bool(options.get("include_usage", False)),
        max_tokens=_optional_max_tokens(body),
    )


def _error_response(message: str, status: int = 400) -> web.Response:
    error = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return web.json_response({"error": error}, status=status)


# --------------------------------------------------------------------------- response bodies


@dataclass
class ServerStats:
    """Counters kept in ``app["stats"]``; ``started`` is also the next request index."""

    started: int = 0
    completed: int = 0
    disconnected: int = 0
    rejected: int = 0


@dataclass(frozen=True)
class _Reply:
    """Fields shared by every chunk of one response."""

    index: int
    model: str
    created: int
    request: _ChatRequest
    plan: RequestPlan
    #: When the handler began (RECEIVED_AT), with ``stamp_writes``; None: the chunks carry no stamps.
    received_at: float | None

    @property
    def id(self) -> str:
        return f"chatcmpl-synthetic-{self.index}"

    def usage(self) -> dict[str, Any]:
        """Every generated token counts, reasoning and tool-call arguments too, as OpenAI's completion_tokens do."""
        prompt, completion = self.request.prompt_tokens, self.plan.output_tokens
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if self.plan.reasoning_tokens:
            usage["completion_tokens_details"] = {"reasoning_tokens": self.plan.reasoning_tokens}
        return usage

    def tool_call(self, arguments: str) -> dict[str, Any]:
        """The tool call (a streamed delta's header, or the whole call of a completion) with ``arguments``."""
        return {
            "index": 0,
            "id": f"call_synthetic_{self.index}",
            "type": "function",
            "function": {"name": TOOL_NAME, "arguments": arguments},
        }

    def arguments(self, position: int) -> str:
        """The part of the tool call's arguments the token at ``position`` carries: its text, after the opening of
        the JSON object for the call's first token, before its end for the last token of a call that finished (cut
        short by max_tokens, the arguments stay unfinished, as a real model's do)."""
        plan = self.plan
        text = token_text(position)
        if position == plan.output_tokens - plan.tool_call_tokens:
            text = _ARGUMENTS_OPEN + text
        if position == plan.output_tokens - 1 and plan.finish_reason == "tool_calls":
            text += _ARGUMENTS_CLOSE
        return text

    def deltas(self, position: int) -> list[dict[str, Any]]:
        """The deltas sent at the planned time of the token at ``position``, one a chunk: the token's own, and
        before the first token of a tool call the call's header (id and name, empty arguments: no token), as
        OpenAI streams one."""
        kind = self.plan.kind(position)
        if kind == "reasoning":
            deltas: list[dict[str, Any]] = [{"reasoning_content": token_text(position)}]
        elif kind == "content":
            deltas = [{"content": token_text(position)}]
        else:
            piece = {"tool_calls": [{"index": 0, "function": {"arguments": self.arguments(position)}}]}
            first = position == self.plan.output_tokens - self.plan.tool_call_tokens
            deltas = [{"tool_calls": [self.tool_call("")]}, piece] if first else [piece]
        if position == 0:
            deltas[0] = {"role": "assistant", **deltas[0]}
        return deltas

    def _chunk(self, **fields: Any) -> dict[str, Any]:
        """A streamed chunk with ``fields``, made just before its write (so stamped then, with ``stamp_writes``)."""
        chunk: dict[str, Any] = {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            **fields,
        }
        if self.received_at is not None:
            chunk[RECEIVED_AT] = self.received_at
            chunk[WRITTEN_AT] = time.perf_counter()
        return chunk

    def chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        choices = [{"index": 0, "delta": delta, "finish_reason": finish_reason}]
        if self.request.include_usage:  # as OpenAI does: only the final chunk carries usage
            return self._chunk(choices=choices, usage=None)
        return self._chunk(choices=choices)

    def usage_chunk(self) -> dict[str, Any]:
        return self._chunk(choices=[], usage=self.usage())

    def completion(self) -> dict[str, Any]:
        plan = self.plan
        texts: dict[str, list[str]] = {"reasoning": [], "content": [], "tool_call": []}
        for position in range(plan.output_tokens):
            kind = plan.kind(position)
            texts[kind].append(self.arguments(position) if kind == "tool_call" else token_text(position))
        message: dict[str, Any] = {"role": "assistant", "content": "".join(texts["content"]) or None}
        if texts["reasoning"]:
            message["reasoning_content"] = "".join(texts["reasoning"])
        if texts["tool_call"]:
            call = self.tool_call("".join(texts["tool_call"]))
            del call["index"]  # a streamed delta's field
            message["tool_calls"] = [call]
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "message": message, "finish_reason": plan.finish_reason}],
            "usage": self.usage(),
        }


_ARGUMENTS_OPEN = '{"query": "'
_ARGUMENTS_CLOSE = '"}'


def _sse(payload: dict[str, Any] | str) -> bytes:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


async def _sleep_until(deadline: float) -> None:
    """Sleep until a loop-clock deadline; absolute deadlines keep per-token lateness from piling up."""
    delay = deadline - asyncio.get_running_loop().time()
    if delay > 0:
        await asyncio.sleep(delay)


def _event_stream() -> web.StreamResponse:
    return web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )


async def _stream(request: web.Request, resp: web.StreamResponse, reply: _Reply, start: float) -> None:
    """Send the plan as SSE, each token at ``start`` + its offset, whatever its kind, each chunk written at once."""
    await resp.prepare(request)
    for position, offset in enumerate(reply.plan.offsets):
        await _sleep_until(start + offset)
        for delta in reply.deltas(position):
            await resp.write(_sse(reply.chunk(delta, None)))
    await resp.write(_sse(reply.chunk({}, reply.plan.finish_reason)))
    if reply.request.include_usage:
        await resp.write(_sse(reply.usage_chunk()))
    await resp.write(_sse("[DONE]"))
    await resp.write_eof()


async def _complete(request: web.Request, reply: _Reply, start: float) -> web.Response:
    """Non-streaming: wait for the whole plan, then answer in one piece."""
    await _sleep_until(start + reply.plan.total_seconds)
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("client went away before the response")
    return web.json_response(reply.completion())


# --------------------------------------------------------------------------- the app


class _Handlers:
    """Request handlers sharing one config and one set of counters."""

    def __init__(self, config: SyntheticConfig, stats: ServerStats) -> None:
        self.config = config
        self.stats = stats

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        received = time.perf_counter() if self.config.stamp_writes else None  # RECEIVED_AT
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            self.stats.rejected += 1
            return _error_response("request body is not valid JSON")
        try:
            chat = _parse_chat_request(body, self.config.model)
        except _BadRequest as exc:
            self.stats.rejected += 1
            return _error_response(str(exc))
        # Take the index with no await in between, so indices follow arrival order.
        index = self.stats.started
        self.stats.started += 1
        start = asyncio.get_running_loop().time()
        plan = plan_request(self.config, index, chat.max_tokens)
        reply = _Reply(index, chat.model, int(time.time()), chat, plan, received)
        stream = _event_stream() if chat.stream else None
        try:
            if stream is not None:
                await _stream(request, stream, reply, start)
                resp: web.StreamResponse = stream
            else:
                resp = await _complete(request, reply, start)
        except ConnectionResetError:
            # Routine for a load generator; left to aiohttp it would be logged as an error.
            self.stats.disconnected += 1
            log.debug("client disconnected during request %d", index)
            # A prepared stream must be returned as it is (it cannot be prepared twice);
            # otherwise any response does, as aiohttp drops it quietly on a closed connection.
            return stream if stream is not None else web.Response(status=499)
        except asyncio.CancelledError:
            # Cancelled by a shutdown or a dropped connection: count it, then let it go.
            self.stats.disconnected += 1
            raise
        self.stats.completed += 1
        return resp

    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def models(self, request: web.Request) -> web.Response:
        model = {"id": self.config.model, "object": "model", "created": 0, "owned_by": "tokenlat"}
        return web.json_response({"object": "list", "data": [model]})


def create_app(config: SyntheticConfig | None = None) -> web.Application:
    """Build the aiohttp application; ``app["stats"]`` holds its :class:`ServerStats`."""
    config = config or SyntheticConfig()
    stats = ServerStats()
    handlers = _Handlers(config, stats)
    app = web.Application()
    # A plain string key is part of this module's contract (tests read app["stats"]);
    # aiohttp merely recommends AppKey, so silence that advice here.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", web.NotAppKeyWarning)
        app["stats"] = stats
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/v1/models", handlers.models)
    return app


async def serve(
    config: SyntheticConfig, host: str = "127.0.0.1", port: int = 0, *, access_log: bool = False
) -> tuple[web.AppRunner, int]:
    """Start the server in the running loop; returns the runner (``await runner.cleanup()``
    to stop) and the bound port."""
    runner = web.AppRunner(
        create_app(config),
        access_log=access_logger if access_log else None,
        shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
    )
    await runner.setup()
    # One socket of our own: aiohttp's TCPSite binds every address a host name resolves to, each with its own
    # ephemeral port when asked for port 0.
    sock = listening.bind(host, port)
    try:
        await web.SockSite(runner, sock).start()
    except BaseException:
        sock.close()
        await runner.cleanup()
        raise
    return runner, sock.getsockname()[1]


# --------------------------------------------------------------------------- command line


def _distribution_arg(spec: str) -> Distribution:
    try:
        return Distribution.parse(spec)
    except ValueError as exc:
        # ArgumentTypeError keeps our message; a ValueError would become "invalid value".
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_token_range(text: str) -> tuple[int, int]:
    """``N`` or ``LO-HI`` (inclusive, 1 <= LO <= HI); raises ValueError naming the text and the reason."""
    lo_text, sep, hi_text = text.partition("-")
    try:
        lo = int(lo_text)
        hi = int(hi_text) if sep else lo
    except ValueError:
        raise ValueError(f"{text!r} is not N or LO-HI (integers)") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"{text!r}: need 1 <= LO <= HI")
    return lo, hi


def _output_tokens_arg(text: str) -> tuple[int, int]:
    try:
        return parse_token_range(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _share_arg(text: str) -> float:
    try:
        share = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= share <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share between 0 and 1")
    return share


def _int_arg(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer from ``low`` to ``high`` (no upper bound when None)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value} is outside {low}-{'' if high is None else high}")
        return value

    return parse


def _build_parser() -> argparse.ArgumentParser:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(
        prog="python -m tokenlat_cli.verify.synthetic",
        description="Synthetic OpenAI-compatible streaming server with seeded, reproducible timings.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    parser.add_argument("--port", type=_int_arg(0, 65535), default=0, help="port; 0 picks a free one (default: 0)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="RNG seed (default: %(default)s)")
    parser.add_argument(
        "--ttft",
        type=_distribution_arg,
        default=defaults.ttft,
        help="time to first token (default: %(default)s)",
    )
    parser.add_argument(
        "--inter-token",
        type=_distribution_arg,
        default=defaults.inter_token,
        help="gap between tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--output-tokens",
        type=_output_tokens_arg,
        default=defaults.output_tokens,
        metavar="LO-HI",
        help="completion length range, inclusive (default: {}-{})".format(*defaults.output_tokens),
    )
    parser.add_argument("--model", default=defaults.model, help="model name (default: %(default)s)")
    parser.add_argument(
        "--reasoning",
        type=_share_arg,
        default=defaults.reasoning,
        metavar="SHARE",
        help="share of each completion's tokens streamed first as delta.reasoning_content (default: %(default)s)",
    )
    parser.add_argument(
        "--tool-call-tokens",
        type=_int_arg(0),
        default=defaults.tool_call_tokens,
        metavar="N",
        help="end each completion with a tool call whose arguments stream as its last N tokens (default: %(default)s)",
    )
    parser.add_argument(
        "--stamp-writes",
        action="store_true",
        help=f"stamp every streamed chunk with the server's clock as it is written ({WRITTEN_AT}) and as the"
        f" request was received ({RECEIVED_AT})",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    return parser


async def _run(config: SyntheticConfig, host: str, port: int, access_log: bool) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(signum, stop.set)
    runner, bound_port = await serve(config, host, port, access_log=access_log)
    try:
        print(listening.line(LISTENING_NAME, host, bound_port), flush=True)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")
    if args.access_log:
        logging.getLogger("aiohttp.access").setLevel(logging.INFO)
    config = SyntheticConfig(
        seed=args.seed,
        ttft=args.ttft,
        inter_token=args.inter_token,
        output_tokens=args.output_tokens,
        model=args.model,
        reasoning=args.reasoning,
        tool_call_tokens=args.tool_call_tokens,
        stamp_writes=args.stamp_writes,
    )
    try:
        asyncio.run(_run(config, args.host, args.port, args.access_log))
    except OSError as exc:  # e.g. the port is taken or the host does not resolve
        print(f"tokenlat-synthetic: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # a SIGINT that arrived before the handlers were installed
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
