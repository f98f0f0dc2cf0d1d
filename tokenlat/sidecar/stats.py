"""What the sidecar counts (``SidecarStats``, served at ``GET /-/tokenlat/stats``) and the error.type values of
its own failure cases: one module, so that the protocols, the measuring and the docs test name them alike."""

from __future__ import annotations

from dataclasses import dataclass

# error.type values of the sidecar's own failure cases (an upstream HTTP error uses its status code).
UPSTREAM_UNAVAILABLE = "upstream_unavailable"
UPSTREAM_RESET = "upstream_reset"
UPSTREAM_ERROR = "upstream_error"
PARSER_FAILURE = "tokenlat_parser_failure"

# The counter of responses that looked like token streams but that no format recognised (relayed, not measured).
UNRECOGNISED_STREAMS = "tokenlat.sidecar.unrecognised_streams"


@dataclass
class SidecarStats:
    """Counters of every case the sidecar handles, served as JSON at ``GET /-/tokenlat/stats``.

    ``requests`` counts every proxied request. Each one that got a response from the upstream is one of
    ``streams`` (token streams, measured) or ``passthrough`` (everything else, relayed); the others are
    ``upstream_unavailable``, ``rejected`` (503 while draining), or ended by a reset or a client disconnect before
    the upstream answered. The remaining counters overlap those: ``unrecognised_streams`` (pass-throughs that
    looked like streams), ``upstream_errors`` (4xx/5xx responses and error events inside streams),
    ``upstream_resets``, ``client_disconnects`` (including streams cut by the drain timeout), the parsers'
    malformed events and oversized lines, ``oversized_bodies`` (request bodies longer than ``max_json_body``: relayed
    whole, their ``model`` not read), and ``in_flight`` (requests being proxied now).

    The connection limits count apart from requests: ``idle_timeouts`` (keep-alive connections closed after the
    idle timeout between requests), ``head_timeouts`` (connections closed with a 408 because a request head did not
    arrive whole in time), ``oversized_heads`` (answered 431 because a request head grew past its maximum size),
    ``refused_connections`` (answered 503 because the sidecar had its maximum of client
    connections), ``upstream_idle_closed`` (upstream connections closed instead of kept, the idle pool being full),
    and ``connections`` (client connections open now).
    """

    requests: int = 0
    streams: int = 0
    passthrough: int = 0
    unrecognised_streams: int = 0
    upstream_errors: int = 0
    upstream_unavailable: int = 0
    upstream_resets: int = 0
    client_disconnects: int = 0
    malformed_events: int = 0
    oversized_lines: int = 0
    oversized_bodies: int = 0
    rejected: int = 0
    in_flight: int = 0
    idle_timeouts: int = 0
    head_timeouts: int = 0
    oversized_heads: int = 0
    refused_connections: int = 0
    upstream_idle_closed: int = 0
    connections: int = 0
