"""Server-sent events, as OpenAI-compatible servers stream them, read and counted inside a process.

``iter_sse_data`` turns network chunks (cut anywhere, even inside a UTF-8 sequence) into the data payloads of
complete events, for a client that reads the events itself. Counting is :mod:`tokenlat.parsers`' ``openai``
format, the sidecar's, and nothing else: ``openai_chunk_tokens`` for a decoded chat.completion.chunk,
``openai_event_tokens`` for one event's data, ``OpenAISSECounter`` for a body chunk by chunk (what
``tokenlat.asgi.TokenStreamingResponse`` counts with). So a token is a choice carrying ``delta.content``,
``delta.reasoning_content`` / ``delta.reasoning``, ``delta.refusal``, tool-call arguments or ``text``, the same
in a service and in front of it: a reasoning model's stream gets one TTFT and one token count either way.

Nothing here needs Starlette (``tokenlat.asgi`` does): any server or client can count with it.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator, Iterable
from typing import Any

from tokenlat.parsers import StreamEvent, StreamParser, decode_payload
from tokenlat.stream import Usage

__all__ = [
    "DONE",
    "Content",
    "Observation",
    "OpenAISSECounter",
    "iter_sse_data",
    "openai_chunk_tokens",
    "openai_event_tokens",
    "parse_openai_event",
]

DONE = "[DONE]"
# The longest line (and event data) iter_sse_data keeps, as the sidecar's parser: what is longer is dropped.
MAX_LINE_CHARS = 1 << 20
Content = str | bytes | memoryview
# What one chunk (or event) carries: (output tokens, usage or None).
Observation = tuple[int, Usage | None]
_NOTHING: Observation = (0, None)


async def iter_sse_data(chunks: AsyncIterable[bytes], *, max_line_chars: int = MAX_LINE_CHARS) -> AsyncIterator[str]:
    """Yield the data of each event (multi-line data joined by newlines) as soon as the event is complete.

    Memory stays bounded as in the sidecar's parser: a line longer than ``max_line_chars`` (or an event whose data
    adds up to more) is dropped with its event, its characters discarded as they arrive; only the new text of a
    chunk is searched for line ends, so a long line costs its length, not its length squared.
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""  # the partial line carried to the next chunk; never more than max_line_chars
    discarding = False  # inside an over-long line: drop text up to its end
    poisoned = False  # the event being read lost a line: drop it
    data_lines: list[str] = []
    data_size = 0
    async for chunk in chunks:
        *lines, tail = decoder.decode(chunk).split("\n")
        for i, raw in enumerate(lines):
            if i == 0:
                raw, pending = pending + raw, ""
                if discarding:  # the end of an over-long line: dropped, and its event with it
                    discarding = False
                    continue
            line = raw.removesuffix("\r")
            if line == "":
                if data_lines and not poisoned:
                    yield "\n".join(data_lines)
                data_lines, data_size, poisoned = [], 0, False
            elif len(line) > max_line_chars:
                data_lines, data_size, poisoned = [], 0, True
            elif line.startswith("data:") and not poisoned:
                data_size += len(line) - 4  # its data and the newline that joins it
                if data_size > max_line_chars:
                    data_lines, data_size, poisoned = [], 0, True
                else:
                    data_lines.append(line[5:].removeprefix(" "))
        if discarding:
            continue
        if len(pending) + len(tail) > max_line_chars:
            pending, discarding = "", True
            data_lines, data_size, poisoned = [], 0, True
        else:
            pending += tail
    if discarding:
        return
    pending += decoder.decode(b"", final=True)
    if pending.startswith("data:") and not poisoned and len(pending) <= max_line_chars:
        data_lines.append(pending[5:].removeprefix(" "))
    if data_lines and not poisoned:
        yield "\n".join(data_lines)


def parse_openai_event(data: str) -> dict[str, Any] | None:
    """The JSON of a chat.completion.chunk; None for the closing [DONE]."""
    if data == DONE:
        return None
    parsed = json.loads(data)
    if not isinstance(parsed, dict):
        raise ValueError(f"expected a JSON object in an SSE event, got {type(parsed).__name__}")
    return parsed


def openai_chunk_tokens(event: dict[str, Any] | None) -> int:
    """Tokens a decoded chunk carries, as the sidecar counts them: one per choice with generated text (content,
    reasoning, refusal, tool-call arguments, completion text). A role-only, usage-only or malformed chunk, and
    None ([DONE]), carry none."""
    if not event:
        return 0
    decoded = decode_payload("openai", event)
    return 0 if decoded is None else decoded.tokens


def observe_events(events: Iterable[StreamEvent]) -> Observation:
    """The tokens of ``events`` added up, and the last usage report among them."""
    tokens, usage = 0, None
    for event in events:
        tokens += event.tokens
        if event.input_tokens is not None or event.output_tokens is not None:
            usage = (event.input_tokens, event.output_tokens)
    return tokens, usage


def openai_event_tokens(data: str) -> Observation:
    """Tokens and usage of one SSE event's data. ``[DONE]``, non-JSON and malformed events carry neither."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        # Counting must never break the response it observes: a payload tokenlat does not understand counts 0.
        return _NOTHING
    event = decode_payload("openai", payload)
    return _NOTHING if event is None else observe_events((event,))


class OpenAISSECounter:
    """Counts output tokens and finds the usage in an OpenAI-style SSE body, chunk by chunk.

    ``counter(chunk)`` returns what the chunk's complete events carry: a chunk may hold several events, or end in
    the middle of one (or of a UTF-8 sequence), so the counter keeps the unfinished rest: one instance per
    response. An event counts when its terminating blank line arrives, which is when an SSE client dispatches it;
    ``close()`` at the body's end gives a last event the body left unterminated.

    It is a ``StreamParser("openai")`` underneath, the sidecar's own parser, so that framing (``\\r`` line ends,
    comments, an oversized line) and counting cannot drift apart between measuring inside a service and in
    front of it. It never raises on what the body holds: what it does not understand counts 0.
    """

    __slots__ = ("_parser",)

    def __init__(self) -> None:
        self._parser = StreamParser("openai")

    def __call__(self, chunk: Content) -> Observation:
        if isinstance(chunk, str):  # as Starlette sends it; "replace": a lone surrogate must not break counting
            chunk = chunk.encode("utf-8", "replace")
        events = self._parser.feed(chunk)
        return observe_events(events) if events else _NOTHING

    def close(self) -> Observation:
        """What a last event the body did not terminate with a blank line carries; call once, when it ends."""
        return observe_events(self._parser.close())
