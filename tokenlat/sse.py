"""Server-sent events, as OpenAI-compatible servers stream them.

``iter_sse_data`` turns network chunks (cut anywhere, even inside a UTF-8 sequence) into the data payloads of
complete events; ``openai_chunk_tokens`` says how many tokens one chat.completion.chunk carries.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

DONE = "[DONE]"


async def iter_sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Yield the data of each event (multi-line data joined by newlines) as soon as the event is complete."""
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending = ""
    data_lines: list[str] = []
    async for chunk in chunks:
        pending += decoder.decode(chunk)
        *lines, pending = pending.split("\n")
        for raw in lines:
            line = raw.removesuffix("\r")
            if line == "":
                if data_lines:
                    yield "\n".join(data_lines)
                    data_lines = []
            elif line.startswith("data:"):
                data_lines.append(line[5:].removeprefix(" "))
    pending += decoder.decode(b"", final=True)
    if pending.startswith("data:"):
        data_lines.append(pending[5:].removeprefix(" "))
    if data_lines:
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
    """Tokens a chunk carries: one per choice with non-empty content (a role-only or usage chunk carries none)."""
    if not event:
        return 0
    return sum(1 for choice in event.get("choices") or () if (choice.get("delta") or {}).get("content"))
