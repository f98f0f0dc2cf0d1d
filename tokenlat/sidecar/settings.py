"""The sidecar's settings, checked once at construction, and where its upstream is.

Everything here is decided before the first connection: a bad upstream URL or format is a ValueError from
``Sidecar(...)``, never a failure on a client's request.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from yarl import URL

# Connecting must not hang a client forever on a blackholed upstream; reading must never time out, because a
# long prompt can legitimately take minutes to its first token.
CONNECT_TIMEOUT_S = 10.0


def validate_upstream(upstream: str) -> str:
    """The upstream base URL without a trailing slash; ValueError says what is wrong with it."""
    try:
        url = URL(upstream)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{upstream!r} is not a URL: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{upstream!r} must be an http:// or https:// URL with a host")
    if url.query_string or url.fragment:
        raise ValueError(f"{upstream!r} must not have a query or a fragment")
    if url.raw_user or url.raw_password:
        shown = str(url.with_user(None))  # never echo a secret
        raise ValueError(f"{shown!r} must not carry credentials: clients send theirs, and the sidecar relays them")
    return str(url).rstrip("/")


@dataclass(frozen=True)
class Upstream:
    """Where requests go: what the pool connects to and what the request heads name."""

    host: str
    port: int
    ssl: ssl.SSLContext | None = field(compare=False)
    authority: bytes  # the Host header
    prefix: bytes  # the base URL's path, put before every request target

    @classmethod
    def of(cls, upstream: str) -> Upstream:
        url = URL(upstream)
        https = url.scheme == "https"
        return cls(
            host=url.raw_host or "",
            port=url.port or (443 if https else 80),
            ssl=ssl.create_default_context() if https else None,  # certificates checked against the system's CAs
            authority=url.raw_authority.encode(),
            prefix=url.raw_path.rstrip("/").encode(),
        )


@dataclass(frozen=True)
class Settings:
    """What ``Sidecar`` was given, checked and normalised there (see it for what each one means)."""

    upstream: str
    fmt: str | None
    user_id_header: bytes | None  # lowercase, as the headers are compared
    request_id_header: bytes
    provider: str | None
    max_json_body: int
    max_line_bytes: int
    detect_bytes: int
    measure: bool
