"""The HTTP/1.1 wire pieces the sidecar writes: message heads, header filtering and chunk framing.

Parsing is httptools' (llhttp, Node.js's parser): nothing here reads HTTP. What a proxy must write itself is
small and fixed by RFC 9112: a start line, the header fields, and the body's framing, which a proxy always
chooses anew for each hop (it forwards neither Content-Length nor Transfer-Encoding blindly, so that the two
hops cannot disagree about where a message ends).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

Headers = Sequence[tuple[bytes, bytes]]

# RFC 9110 section 7.6.1: hop-by-hop fields describe one connection and are not forwarded; "Proxy-*" is matched
# by prefix, and the fields a Connection header names are dropped as well. Content-Length and
# Transfer-Encoding are framing, set anew per hop.
HOP_BY_HOP = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade", b"content-length"}
)

LAST_CHUNK = b"0\r\n\r\n"
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


def by_name(headers: Headers) -> dict[bytes, bytes]:
    """The first value of each field, by its lowercase name: one pass, for a message whose fields are looked up
    several times (a request's)."""
    fields: dict[bytes, bytes] = {}
    for key, value in headers:
        fields.setdefault(key.lower(), value)
    return fields


def text(value: bytes | None) -> str | None:
    """A field value as text (latin-1), or None."""
    return None if value is None else value.decode("latin-1")


def dropping(*names: bytes) -> frozenset[bytes]:
    """The fields ``end_to_end`` drops: the hop-by-hop and framing ones, and ``names`` (lowercase)."""
    return HOP_BY_HOP | frozenset(names)


def end_to_end(headers: Headers, dropped: frozenset[bytes] = HOP_BY_HOP) -> list[tuple[bytes, bytes]]:
    """``headers`` without the fields in ``dropped`` (lowercase; see ``dropping``), those a Connection header names
    and Proxy-*; repeated fields kept. One pass, and a second only when a Connection header names fields."""
    kept: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()
    for key, value in headers:
        lower = key.lower()
        if lower in dropped or lower.startswith(b"proxy-"):
            if lower == b"connection":
                named.update(token.strip().lower() for token in value.split(b","))
            continue
        kept.append((key, value))
    if named:
        kept = [(key, value) for key, value in kept if key.lower() not in named]
    return kept


def _fields(headers: Headers) -> bytes:
    return b"".join([b"%s: %s\r\n" % field for field in headers])


def request_head(method: bytes, target: bytes, headers: Headers) -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\n" + _fields(headers) + b"\r\n"


def response_head(status: int, reason: bytes, headers: Headers) -> bytes:
    if not reason:
        try:
            reason = HTTPStatus(status).phrase.encode()
        except ValueError:
            reason = b"Unknown"
    return b"HTTP/1.1 %d %s\r\n%s\r\n" % (status, reason, _fields(headers))


def chunk(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body (never empty: an empty chunk ends the body)."""
    return b"%x\r\n%s\r\n" % (len(data), data)


def json_error(status: int, kind: str, message: str, *, close: bool = False, extra: Headers = ()) -> bytes:
    """An error of the sidecar's own, in OpenAI's error shape, which every OpenAI-compatible client knows how to
    show."""
    payload = {"error": {"message": message, "type": kind, "code": status}}
    return json_response(status, payload, close=close, extra=extra)


def json_response(status: int, payload: Any, *, close: bool = False, extra: Headers = ()) -> bytes:
    """A whole response with a JSON body (the sidecar's own answers and errors)."""
    body = json.dumps(payload).encode()
    fields: list[tuple[bytes, bytes]] = [
        (b"Content-Type", b"application/json; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode()),
        *extra,
    ]
    if close:
        fields.append((b"Connection", b"close"))
    return response_head(status, b"", fields) + body
