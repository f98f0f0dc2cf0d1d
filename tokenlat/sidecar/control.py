"""The sidecar's own endpoints, under ``/-/tokenlat/``: health (for a readiness probe) and stats.

A path segment of "-" is used by no inference API, and the whole prefix is reserved, so a request there never
reaches the upstream: a typo under it is the sidecar's 404, not the model server's.
"""

from __future__ import annotations

from dataclasses import asdict

from tokenlat.sidecar import http1
from tokenlat.sidecar.stats import SidecarStats

CONTROL_PREFIX = "/-/tokenlat/"
STATS_PATH = CONTROL_PREFIX + "stats"
HEALTH_PATH = CONTROL_PREFIX + "health"


def answer(method: bytes, path: str, stats: SidecarStats, draining: bool) -> bytes:
    """The whole response to a request for ``path`` (under CONTROL_PREFIX)."""
    if path not in (HEALTH_PATH, STATS_PATH):
        return http1.json_error(404, "not_found", f"{path} is reserved for the tokenlat sidecar")
    if method != b"GET":
        return http1.json_error(405, "method_not_allowed", f"{path} answers GET only")
    if path == STATS_PATH:
        return http1.json_response(200, {**asdict(stats), "draining": draining})
    if draining:  # a load balancer stops sending here before the port closes
        return http1.json_response(503, {"status": "draining"})
    return http1.json_response(200, {"status": "serving"})
