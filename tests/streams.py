"""Recorded-style token streams of every format the sidecar parses, shared by the parser and detection tests.

Each follows the shape of its server's documented stream (fields, their order, line ends, the terminating event):
OpenAI chat and completions as vLLM and SGLang send them (with reasoning, n=2, tool calls and the usage chunk),
Anthropic Messages, TGI ``/generate_stream``, Triton's ``generate_stream`` (a TensorRT-LLM ensemble), Ollama's
``/api/generate`` and ``/api/chat``, and the generic ``{"token": ...}`` form. Multi-byte text (CJK, emoji) and
``\r\n`` line ends are in them on purpose, so that cuts land inside UTF-8 characters and between ``\r`` and ``\n``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from itertools import pairwise

from tokenlat.parsers import StreamEvent

E = StreamEvent


def sse(*events: str, eol: str = "\n") -> bytes:
    """An SSE body: each item is an event's lines (without the blank line), ended by a blank line."""
    return "".join(event.replace("\n", eol) + eol + eol for event in events).encode()


def chunk_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in pairwise(bounds)]


# -- recorded-style streams -----------------------------------------------------------------------------------

_CHAT = '{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1732780000,"model":"qwen3-8b",'
_CHAT_END = ',"usage":null}'

OPENAI_CHAT = (
    sse(
        "data: " + _CHAT + '"choices":[{"index":0,"delta":{"role":"assistant","content":""},'
        '"logprobs":null,"finish_reason":null}]' + _CHAT_END,
        "data: "
        + _CHAT
        + '"choices":[{"index":0,"delta":{"reasoning_content":"想一想"},"finish_reason":null}]'
        + _CHAT_END,
        "data: " + _CHAT + '"choices":[{"index":0,"delta":{"content":"你好"},"finish_reason":null}]' + _CHAT_END,
    )
    + sse(
        ": keep-alive",
        "data: " + _CHAT + '"choices":[{"index":0,"delta":{"content":"👋 world"},"finish_reason":null}]' + _CHAT_END,
        eol="\r\n",
    )
    + sse(
        # n=2: one chunk carries a token for each choice.
        "data: "
        + _CHAT
        + '"choices":[{"index":0,"delta":{"content":"!"}},{"index":1,"delta":{"content":"?"}}]'
        + _CHAT_END,
        # Tool call: the name chunk carries no argument text, the argument chunks do.
        "data: " + _CHAT + '"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1",'
        '"type":"function","function":{"name":"get_weather","arguments":""}}]}}]' + _CHAT_END,
        "data: " + _CHAT + '"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,'
        '"function":{"arguments":"{\\"city\\": \\"北京\\"}"}}]}}]' + _CHAT_END,
        "data: " + _CHAT + '"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]' + _CHAT_END,
        "data: " + _CHAT + '"choices":[],"usage":{"prompt_tokens":12,"total_tokens":18,"completion_tokens":6}}',
        "data: [DONE]",
    )
)
OPENAI_CHAT_EVENTS = [
    E(0, model="qwen3-8b"),
    E(1, model="qwen3-8b"),
    E(1, model="qwen3-8b"),
    E(1, model="qwen3-8b"),
    E(2, model="qwen3-8b"),
    E(0, model="qwen3-8b"),
    E(1, model="qwen3-8b"),
    E(0, model="qwen3-8b"),
    E(0, input_tokens=12, output_tokens=6, model="qwen3-8b"),
]

_CMPL = '{"id":"cmpl-3","object":"text_completion","created":1732780000,"model":"gpt-3.5-turbo-instruct",'
OPENAI_COMPLETIONS = sse(
    "data: " + _CMPL + '"choices":[{"text":" Once","index":0,"logprobs":null,"finish_reason":null}]}',
    "data: " + _CMPL + '"choices":[{"text":" upon 🕰️","index":0,"logprobs":null,"finish_reason":null}]}',
    "data: " + _CMPL + '"choices":[{"text":"","index":0,"logprobs":null,"finish_reason":"length"}]}',
    "data: [DONE]",
)
OPENAI_COMPLETIONS_EVENTS = [
    E(1, model="gpt-3.5-turbo-instruct"),
    E(1, model="gpt-3.5-turbo-instruct"),
    E(0, model="gpt-3.5-turbo-instruct"),
]

OPENAI_ERROR = sse(
    "data: " + _CHAT + '"choices":[{"index":0,"delta":{"content":"Hi 🙂"}}]' + _CHAT_END,
    'data: {"error":{"message":"The server had an error while processing your request.","type":"server_error",'
    '"param":null,"code":null}}',
    # vLLM: the error object names its exception class as the type.
    'data: {"error":{"object":"error","message":"max_tokens too large","type":"BadRequestError","param":null,'
    '"code":400}}',
    "data: [DONE]",
)
OPENAI_ERROR_EVENTS = [E(1, model="qwen3-8b"), E(0, error="server_error"), E(0, error="BadRequestError")]

ANTHROPIC = sse(
    "event: message_start\n"
    'data: {"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","content":[],'
    '"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":472,'
    '"cache_creation_input_tokens":0,"cache_read_input_tokens":100,"output_tokens":2}}}',
    'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
    '"content_block":{"type":"thinking","thinking":""}}',
    'event: ping\ndata: {"type": "ping"}',
    "event: ping\ndata: {}",  # no type in the payload: the event line, before a \r\n, names it
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"thinking_delta","thinking":"让我想想"}}',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM1gbcDa9GJwZA2b3h"}}',
    'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}',
    'event: content_block_start\ndata: {"type":"content_block_start","index":1,'
    '"content_block":{"type":"text","text":""}}',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
    '"delta":{"type":"text_delta","text":"Hello 世界"}}',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":1,'
    '"delta":{"type":"text_delta","text":" 🎉"}}',
    'event: content_block_stop\ndata: {"type":"content_block_stop","index":1}',
    'event: content_block_start\ndata: {"type":"content_block_start","index":2,'
    '"content_block":{"type":"tool_use","id":"toolu_01","name":"get_weather","input":{}}}',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":2,'
    '"delta":{"type":"input_json_delta","partial_json":""}}',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":2,'
    '"delta":{"type":"input_json_delta","partial_json":"{\\"location\\": \\"SF\\"}"}}',
    'event: content_block_stop\ndata: {"type":"content_block_stop","index":2}',
    'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},'
    '"usage":{"output_tokens":89}}',
    'event: message_stop\ndata: {"type":"message_stop"}',
    eol="\r\n",
)
ANTHROPIC_EVENTS = [
    E(0, input_tokens=572, model="claude-sonnet-4-5"),  # 472 + 100 read from the prompt cache
    E(0),
    E(0),
    E(0),
    E(1),
    E(0),
    E(0),
    E(0),
    E(1),
    E(1),
    E(0),
    E(0),
    E(0),
    E(1),
    E(0),
    E(0, output_tokens=89),
    E(0),
]

ANTHROPIC_ERROR = sse(
    'event: message_start\ndata: {"type":"message_start","message":{"model":"claude-haiku-4-5",'
    '"usage":{"input_tokens":9,"output_tokens":1}}}',
    'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
    '"delta":{"type":"text_delta","text":"Hi 🙂"}}',
    'event: error\ndata: {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}',
)
ANTHROPIC_ERROR_EVENTS = [E(0, input_tokens=9, model="claude-haiku-4-5"), E(1), E(0, error="overloaded_error")]

TGI = sse(
    'data:{"index":1,"token":{"id":9707,"text":"Hello","logprob":-0.31,"special":false},'
    '"generated_text":null,"details":null}',
    'data:{"index":2,"token":{"id":220,"text":" 世","logprob":-0.52,"special":false},'
    '"generated_text":null,"details":null}',
    # A token that is part of a multi-byte character has empty text: still a generated token.
    'data:{"index":3,"token":{"id":9909,"text":"","logprob":-0.7,"special":false},'
    '"generated_text":null,"details":null}',
    'data:{"index":4,"token":{"id":9910,"text":"界😀","logprob":-0.2,"special":false},'
    '"generated_text":null,"details":null}',
    'data:{"index":5,"token":{"id":151645,"text":"<|im_end|>","logprob":-0.01,"special":true},'
    '"generated_text":"Hello 世界😀","details":{"finish_reason":"eos_token","generated_tokens":5,'
    '"input_length":7,"seed":null}}',
)
TGI_EVENTS = [E(1), E(1), E(1), E(1), E(1, input_tokens=7, output_tokens=5)]

TGI_ERROR = sse(
    'data:{"index":1,"token":{"id":9707,"text":"🙂","logprob":-0.31,"special":false},'
    '"generated_text":null,"details":null}',
    'data:{"error":"Request failed during generation: Server error: CUDA out of memory","error_type":"generation"}',
)
TGI_ERROR_EVENTS = [E(1), E(0, error="generation")]

_TRT = (
    '{"context_logits":0.0,"cum_log_probs":0.0,"generation_logits":0.0,"model_name":"ensemble",'
    '"model_version":"1","output_log_probs":[0.0],"sequence_end":false,"sequence_id":0,"sequence_start":false,'
)
TRITON = sse(
    "data: " + _TRT + '"text_output":"Machine"}',
    "data: " + _TRT + '"text_output":" 学习"}',
    "data: " + _TRT + '"text_output":" 🚀"}',
    "data: " + _TRT + '"text_output":""}',
)
TRITON_EVENTS = [E(1, model="ensemble"), E(1, model="ensemble"), E(1, model="ensemble"), E(0, model="ensemble")]

_TRITON_MESSAGE = (
    "in ensemble 'ensemble', Executor failed process requestId 3 due to the following error: "
    "显存不足 🔥 Encountered an error in forwardAsync function: [TensorRT-LLM][ERROR] CUDA runtime error in "
    "cudaMemcpy2DAsync: an illegal memory access was encountered (/app/tensorrt_llm/cpp/runtime/bufferManager.cpp)"
)
TRITON_ERROR = sse(
    "data: " + _TRT + '"text_output":"Machine 🙂"}',
    "data: " + json.dumps({"error": _TRITON_MESSAGE}),
)
TRITON_ERROR_EVENTS = [E(1, model="ensemble"), E(0, error=_TRITON_MESSAGE[:200])]

OLLAMA_GENERATE = (
    b'{"model":"llama3.2","created_at":"2024-08-07T03:57:33.03Z","response":"The","done":false}\n'
    + '{"model":"llama3.2","created_at":"2024-08-07T03:57:33.28Z","response":" 天空","done":false}\n'.encode()
    + '{"model":"llama3.2","created_at":"2024-08-07T03:57:33.51Z","response":" 🌤","done":false}\n'.encode()
    + b'{"model":"llama3.2","created_at":"2024-08-07T03:57:37.07Z","response":"","done":true,'
    b'"done_reason":"stop","context":[1,2,3],"total_duration":10706818083,"load_duration":6338219291,'
    b'"prompt_eval_count":26,"prompt_eval_duration":130079000,"eval_count":259,"eval_duration":4232710000}\n'
)
OLLAMA_GENERATE_EVENTS = [
    E(1, model="llama3.2"),
    E(1, model="llama3.2"),
    E(1, model="llama3.2"),
    E(0, input_tokens=26, output_tokens=259, model="llama3.2"),
]

OLLAMA_CHAT = (
    b'{"model":"gemma2:2b","created_at":"2024-08-07T03:57:33.03Z","message":{"role":"assistant",'
    b'"content":"Hello"},"done":false}\r\n'
    + '{"model":"gemma2:2b","created_at":"2024-08-07T03:57:33.28Z","message":{"role":"assistant",'
    '"content":"!👋"},"done":false}\r\n'.encode()
    + '{"model":"gemma2:2b","created_at":"2024-08-07T03:57:33.40Z","message":{"role":"assistant",'
    '"content":"","thinking":"嗯"},"done":false}\r\n'.encode()
    + b'{"model":"gemma2:2b","created_at":"2024-08-07T03:57:37.07Z","message":{"role":"assistant","content":""},'
    b'"done_reason":"stop","done":true,"total_duration":4353619900,"load_duration":63915300,'
    b'"prompt_eval_count":10,"prompt_eval_duration":246847000,"eval_count":17,"eval_duration":4032296000}'
    # No newline after the last line: close() flushes it.
)
OLLAMA_CHAT_EVENTS = [
    E(1, model="gemma2:2b"),
    E(1, model="gemma2:2b"),
    E(1, model="gemma2:2b"),
    E(0, input_tokens=10, output_tokens=17, model="gemma2:2b"),
]

OLLAMA_ERROR = (
    '{"model":"llama3.2","created_at":"2024-08-07T03:57:33.03Z","response":"The 🙂","done":false}\n'.encode()
    + '{"error":"模型运行出错 💥: unexpected EOF"}\n'.encode()
)
OLLAMA_ERROR_EVENTS = [
    E(1, model="llama3.2"),
    E(0, error="模型运行出错 💥: unexpected EOF"),
]

GENERIC = (
    sse(
        'data: {"token": "Hi"}',
        'data: {"text": " 世界"}',
        ": comment",
        'data: {"token": {"id": 3, "text": "🙂"}}',
        'data: {"token": ""}',
        'data: {"usage": {"input_tokens": 5, "output_tokens": 3}, "model": "tiny-模型🙂"}',
    )
    # One event in two data lines, with \r\n line ends: a \r|\n cut must not end it early.
    + sse('data: {"token":\ndata: "多"}', "data: [DONE]", eol="\r\n")
    # The last event without its blank line: close() flushes it.
    + b'data: {"token": "!"}'
)
GENERIC_EVENTS = [E(1), E(1), E(1), E(0), E(0, input_tokens=5, output_tokens=3, model="tiny-模型🙂"), E(1), E(1)]


@dataclass(frozen=True)
class Case:
    name: str
    fmt: str
    stream: bytes
    events: list[StreamEvent]


CASES = [
    Case("openai-chat", "openai", OPENAI_CHAT, OPENAI_CHAT_EVENTS),
    Case("openai-completions", "openai", OPENAI_COMPLETIONS, OPENAI_COMPLETIONS_EVENTS),
    Case("openai-error", "openai", OPENAI_ERROR, OPENAI_ERROR_EVENTS),
    Case("anthropic", "anthropic", ANTHROPIC, ANTHROPIC_EVENTS),
    Case("anthropic-error", "anthropic", ANTHROPIC_ERROR, ANTHROPIC_ERROR_EVENTS),
    Case("tgi", "tgi", TGI, TGI_EVENTS),
    Case("tgi-error", "tgi", TGI_ERROR, TGI_ERROR_EVENTS),
    Case("triton", "triton", TRITON, TRITON_EVENTS),
    Case("triton-error", "triton", TRITON_ERROR, TRITON_ERROR_EVENTS),
    Case("ollama-generate", "ollama", OLLAMA_GENERATE, OLLAMA_GENERATE_EVENTS),
    Case("ollama-chat", "ollama", OLLAMA_CHAT, OLLAMA_CHAT_EVENTS),
    Case("ollama-error", "ollama", OLLAMA_ERROR, OLLAMA_ERROR_EVENTS),
    Case("generic", "generic", GENERIC, GENERIC_EVENTS),
]
CASE_IDS = [case.name for case in CASES]


def tricky_cuts(data: bytes) -> list[int]:
    """Cut points inside a multi-byte UTF-8 character or between the halves of a \\r\\n."""
    return [
        i
        for i in range(1, len(data))
        if (data[i] & 0xC0) == 0x80 or (data[i - 1] == 0x0D and data[i] == 0x0A)  # continuation byte / CR|LF
    ]


_EOL = re.compile(rb"\r\n|\r|\n")


def _carries_payload(data: list[bytes]) -> bool:
    return b"\n".join(data).strip() not in (b"", b"[DONE]")


def completing_bytes(stream: bytes, ndjson: bool) -> list[int | None]:
    """The offset of the byte that completes each unit of ``stream`` that gives an event, worked out without the
    parsers: an SSE event with data other than [DONE] completes at the first line-end byte of its blank line, an
    NDJSON line at its line end. None for a last unit the stream leaves unterminated (completed by its end)."""
    out: list[int | None] = []
    data: list[bytes] = []  # the data lines of the SSE event being read
    pos = 0
    for match in _EOL.finditer(stream):
        line, pos = stream[pos : match.start()], match.end()
        if ndjson:
            if line.strip():
                out.append(match.start())
        elif not line:
            if _carries_payload(data):
                out.append(match.start())
            data = []
        elif line.startswith(b"data:"):
            data.append(line[5:])
    tail = stream[pos:]
    if tail.strip() if ndjson else _carries_payload([*data, tail[5:]] if tail.startswith(b"data:") else data):
        out.append(None)
    return out
