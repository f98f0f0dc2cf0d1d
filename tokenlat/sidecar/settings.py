"""The sidecar's settings, checked once at construction, and where its upstream is.

Everything here is decided before the first connection: a bad upstream URL or format is a ValueError from
``Sidecar(...)``, never a failure on a client's request.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field

from yarl import URL

from tokenlat.sidecar.models import MAX_MODELS

# Connecting must not hang a client forever on a blackholed upstream; reading must never time out, because a
# long prompt can legitimately take minutes to its first token.
CONNECT_TIMEOUT_S = 10.0

# Client connections. The idle timeout is nginx's keepalive_timeout: longer than the idle timeouts of the load
# balancers and gateways that keep connections to the sidecar alive (60 s on AWS's ALB and GCP's), so that they
# close an idle connection before the sidecar does, and never send a request on one it is closing.
IDLE_TIMEOUT_S = 75.0
# A request head (some hundred bytes to a few KiB) that has not arrived whole in 10 s is a slowloris, not a client.
HEAD_TIMEOUT_S = 10.0
# Bytes a request head (start line and header fields) may take: httptools (llhttp) sets no bound of its own and the
# head is held until it is whole, so without one a client could fill the memory for the whole head timeout. 64 KiB,
# as uvicorn's h11: above nginx's 32 KiB, far above any real client's.
MAX_HEAD_BYTES = 64 << 10
# Client connections at most, when the file-descriptor limit allows as many (``max_connections``).
MAX_CONNECTIONS = 1000
# Idle upstream connections kept for reuse: the benchmark's 100 concurrent streams reuse theirs; beyond that, a
# new connection to a model server in the same pod costs a local handshake.
MAX_IDLE_UPSTREAM = 100
# A request body is kept, up to this size, to read its JSON "model" and "stream" when its response starts: as big
# as a long prompt's body gets, and a bound on the memory a request holds. Reading one runs on the event loop, so
# every stream this process relays waits while a large body is parsed (docs/limits.md); lowering the bound caps
# that wait, at the price of gen_ai.request.model on the larger requests.
MAX_JSON_BODY = 1 << 20
# File descriptors kept for everything but connections: the listening socket, telemetry exports, logs.
RESERVED_FDS = 64


def default_max_connections(max_idle_upstream: int, limit: int | None = None) -> int:
    """The default cap on client connections: MAX_CONNECTIONS, or fewer when the file-descriptor limit (the soft
    RLIMIT_NOFILE, or ``limit``) could not hold them. Each connection with a request in flight holds two
    descriptors (the client's and its upstream's), the idle upstream pool up to ``max_idle_upstream`` more."""
    if limit is None:
        try:
            import resource

            limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        except (ImportError, OSError, ValueError):  # no such limit on this platform
            return MAX_CONNECTIONS
        if limit == resource.RLIM_INFINITY:
            return MAX_CONNECTIONS
    return max(1, min(MAX_CONNECTIONS, (limit - RESERVED_FDS - max_idle_upstream) // 2))


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
    idle_timeout: float = IDLE_TIMEOUT_S
    head_timeout: float = HEAD_TIMEOUT_S
    max_connections: int = MAX_CONNECTIONS
    max_idle_upstream: int = MAX_IDLE_UPSTREAM
    max_head_bytes: int = MAX_HEAD_BYTES
    models: frozenset[str] = frozenset()  # the allowlist of model names; empty: the first max_models seen
    max_models: int = MAX_MODELS
