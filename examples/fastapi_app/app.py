"""An OpenAI-compatible streaming chat endpoint instrumented with tokenlat; the lines marked 1, 2, 3 are all it takes.

    uvicorn examples.fastapi_app.app:app --port 8000        # see README.md

The "engine" is a stand-in that sleeps like one (a prefill pause, then a decode step per token), so the numbers
tokenlat exports have the shape of a real server's.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.responses import Response

import tokenlat
from tokenlat import Telemetry, semconv
from tokenlat.asgi import TokenStreamingResponse

PROVIDER = "tokenlat.example"
# Every metric attribute value becomes a Prometheus label value: only values from small known sets may get there,
# never whatever a client sends. So unknown models are refused (as OpenAI does) and unknown tiers become "other".
MODELS = frozenset({"qwen3-8b", "llama-3.1-8b"})
TIERS = frozenset({"free", "pro", "enterprise"})

PREFILL_SECONDS = 0.02
DECODE_SECONDS = 0.005
REPLY = ("Token", " latency", " is", " measured", " where", " it", " happens", ".")


class Message(BaseModel):
    role: str
    content: str


class StreamOptions(BaseModel):
    include_usage: bool = False


class ChatRequest(BaseModel):
    model: str
    messages: list[Message]
    stream: bool = False
    max_tokens: int = Field(default=len(REPLY), ge=1, le=100_000)
    stream_options: StreamOptions | None = None


def prompt_tokens(messages: list[Message]) -> int:
    """Words as tokens: a stand-in for the model's tokenizer."""
    return sum(len(message.content.split()) for message in messages)


async def engine(max_tokens: int) -> AsyncIterator[str]:
    """Stands in for an inference engine: one prefill pause, then one token per decode step."""
    await asyncio.sleep(PREFILL_SECONDS)
    for i in range(max_tokens):
        if i:
            await asyncio.sleep(DECODE_SECONDS)
        yield REPLY[i % len(REPLY)]


def _sse(payload: dict[str, Any] | str) -> str:
    data = payload if isinstance(payload, str) else json.dumps(payload, separators=(",", ":"))
    return f"data: {data}\n\n"


async def openai_sse(
    tokens: AsyncIterator[str], model: str, input_tokens: int, include_usage: bool
) -> AsyncIterator[str]:
    """The chat.completion.chunk events OpenAI streams: role, one chunk per token, finish, usage, [DONE]."""
    base = {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    def chunk(delta: dict[str, str], finish_reason: str | None = None) -> str:
        return _sse({**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]})

    yield chunk({"role": "assistant"})
    output_tokens = 0
    async for token in tokens:
        output_tokens += 1
        yield chunk({"content": token})
    yield chunk({}, "length")
    if include_usage:
        usage = {"prompt_tokens": input_tokens, "completion_tokens": output_tokens}
        yield _sse({**base, "choices": [], "usage": {**usage, "total_tokens": input_tokens + output_tokens}})
    yield _sse("[DONE]")


def create_app(telemetry: Telemetry | None = None) -> FastAPI:
    """The app. ``telemetry``: record into this one (the caller owns it and shuts it down); None: configure
    tokenlat from the environment at startup and shut it down, flushing the last export, at shutdown."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if telemetry is not None:
            yield
            return
        app.state.telemetry = tokenlat.configure()  # 1: OTLP exporters and settings from the environment
        try:
            yield
        finally:
            app.state.telemetry.shutdown()  # 2: flush the last export

    app = FastAPI(title="tokenlat example", lifespan=lifespan)
    if telemetry is not None:
        app.state.telemetry = telemetry

    @app.post("/v1/chat/completions")
    async def chat_completions(
        body: ChatRequest,
        request: Request,
        x_user_id: Annotated[str | None, Header()] = None,
        x_user_tier: Annotated[str | None, Header()] = None,
        x_request_id: Annotated[str | None, Header()] = None,
    ) -> Response:
        if body.model not in MODELS:
            error = {"message": f"The model {body.model!r} does not exist", "code": "model_not_found"}
            return JSONResponse({"error": error}, status_code=404)
        metrics = request.app.state.telemetry.metrics
        attributes = {
            semconv.GEN_AI_OPERATION_NAME: "chat",
            semconv.GEN_AI_PROVIDER_NAME: PROVIDER,
            semconv.GEN_AI_REQUEST_MODEL: body.model,
        }
        if x_user_tier is not None:
            attributes[semconv.USER_TIER] = x_user_tier if x_user_tier in TIERS else "other"
        input_tokens = prompt_tokens(body.messages)
        tokens = engine(body.max_tokens)

        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return TokenStreamingResponse(  # 3: the response records the request from what it sends
                openai_sse(tokens, body.model, input_tokens, include_usage),
                metrics,
                attributes=attributes,
                user_id=x_user_id,  # onto the span, hashed (dropped without a key); never onto a metric
                request_id=x_request_id,
                input_tokens=input_tokens,
            )

        # Not streamed: the same engine, recorded by the stream wrapper (TTFT is still the engine's first token).
        recorded = tokenlat.wrap_async_stream(
            tokens,
            metrics,
            attributes=attributes,
            input_tokens=input_tokens,
            user_id=x_user_id,
            request_id=x_request_id,
        )
        text = "".join([token async for token in recorded])
        usage = {"prompt_tokens": input_tokens, "completion_tokens": body.max_tokens}
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}],
                "usage": {**usage, "total_tokens": input_tokens + body.max_tokens},
            }
        )

    return app


app = create_app()
