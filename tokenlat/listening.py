"""Serving on one socket and saying where: the pattern every tokenlat server follows (the sidecar, verify's
synthetic model server).

A server binds one socket itself, so that port 0 yields exactly one well-defined port (a host name can resolve to
several addresses, and a framework binding each of them would pick a port per address). Once it accepts
connections it prints one line, ``NAME listening on http://HOST:PORT`` (maybe followed by `` -> DETAIL``), and
whoever started it (a supervisor, ``tokenlat verify``, a test) waits for that line and reads the URL from it.
"""

from __future__ import annotations

import socket

__all__ = ["bind", "line", "parse", "prefix", "url"]

# Between the URL and what a line may add after it (the sidecar names its upstream): never part of a URL.
_DETAIL_SEPARATOR = " -> "


def bind(host: str, port: int) -> socket.socket:
    """One listening TCP socket on the first address ``host`` resolves to (any address when empty)."""
    infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, address = infos[0]
    return socket.create_server(address, family=family)


def url(host: str, port: int) -> str:
    """``http://HOST:PORT``, an IPv6 address in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def prefix(name: str) -> str:
    """What the listening line of the server ``name`` starts with."""
    return f"{name} listening on "


def line(name: str, host: str, port: int, detail: str = "") -> str:
    """The listening line: ``NAME listening on URL`` and, when given, `` -> DETAIL``."""
    return prefix(name) + url(host, port) + (_DETAIL_SEPARATOR + detail if detail else "")


def parse(text: str, line_prefix: str) -> str | None:
    """The URL of the first line of ``text`` that starts with ``line_prefix`` (see ``prefix``), or None."""
    for candidate in text.splitlines():
        if candidate.startswith(line_prefix):
            return candidate[len(line_prefix) :].split(_DETAIL_SEPARATOR, 1)[0].strip()
    return None
