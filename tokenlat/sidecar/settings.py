"""The sidecar's settings, checked once at construction, and where its upstream is.

Everything here is decided before the first connection: a bad upstream URL or format is a ValueError from
``Sidecar(...)``, never a failure on a client's request.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from yarl import URL

from tokenlat.detect import DETECT_BYTES
from tokenlat.parsers import FORMATS

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
    """See ``Sidecar`` for what each one means."""

    upstream: str
    fmt: str | None
    user_id_header: bytes | None  # lowercase, as the headers are compared
    request_id_header: bytes
    provider: str | None
    max_json_body: int
    max_line_bytes: int
    detect_bytes: int
    measure: bool

    @classmethod
    def of(
        cls,
        upstream: str,
        *,
        fmt: str | None = None,
        user_id_header: str | None = "x-user-id",
        request_id_header: str = "x-request-id",
        provider: str | None = None,
        max_json_body: int = 1 << 20,
        max_line_bytes: int = 1 << 20,
        detect_bytes: int = DETECT_BYTES,
        measure: bool = True,
    ) -> Settings:
        """Checked and normalised settings; ValueError names what is wrong."""
        fmt = None if fmt in (None, "auto") else fmt
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: must be auto or one of {', '.join(FORMATS)}")
        if detect_bytes < 1:
            raise ValueError(f"detect_bytes must be at least 1, got {detect_bytes}")
        return cls(
            upstream=validate_upstream(upstream),
            fmt=fmt,
            user_id_header=user_id_header.lower().encode() if user_id_header else None,
            request_id_header=request_id_header.lower().encode(),
            provider=provider or None,
            max_json_body=max_json_body,
            max_line_bytes=max_line_bytes,
            detect_bytes=detect_bytes,
            measure=measure,
        )
