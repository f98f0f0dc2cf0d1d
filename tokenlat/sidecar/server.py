"""``Sidecar``: one sidecar's settings, telemetry, counters, connections and life cycle (start, drain, close).

The protocols and hops reach what they share through it (``settings``, ``stats``, ``measurer``, ``pool``,
``draining``), as uvicorn's protocols reach its server state; nothing else in the package holds global state, so
that two sidecars in one process (a test, the benchmark) cannot interfere.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from tokenlat import listening
from tokenlat.detect import DETECT_BYTES
from tokenlat.parsers import FORMATS, MAX_LINE_BYTES
from tokenlat.recorder import TokenMetrics
from tokenlat.sidecar import control
from tokenlat.sidecar.measure import Measurer
from tokenlat.sidecar.models import MAX_MODELS
from tokenlat.sidecar.pool import UpstreamPool
from tokenlat.sidecar.protocol import ClientProtocol, UpstreamProtocol
from tokenlat.sidecar.settings import (
    HEAD_TIMEOUT_S,
    IDLE_TIMEOUT_S,
    MAX_HEAD_BYTES,
    MAX_IDLE_UPSTREAM,
    MAX_JSON_BODY,
    Settings,
    Upstream,
    default_max_connections,
    validate_upstream,
)
from tokenlat.sidecar.stats import SidecarStats

log = logging.getLogger("tokenlat.sidecar")

#: The name in the line ``tokenlat sidecar`` prints once it serves (``tokenlat.listening``), and that line's start.
LISTENING_NAME = "tokenlat sidecar"
LISTENING_PREFIX = listening.prefix(LISTENING_NAME)


class Sidecar:
    """A streaming reverse proxy in front of ``upstream`` that measures its token streams into ``metrics``.

        sidecar = Sidecar("http://127.0.0.1:8000", telemetry.metrics)
        port = await sidecar.start("127.0.0.1", 9000)
        ...
        sidecar.begin_drain()           # health turns 503, new requests get 503; in-flight ones go on
        await sidecar.drain(30.0)       # stop accepting; wait up to 30 s for the in-flight requests
        await sidecar.close()           # cut what is left (recorded as "cancelled"), close every connection

    ``fmt`` fixes the stream format (None or "auto": detect it per response). ``user_id_header``: the request
    header with the end user's id (hashed onto the span, never a metric attribute; None for none).
    ``request_id_header``: the request header with the request id (a span attribute). ``provider``:
    gen_ai.provider.name (default: the format's name). ``max_json_body``: request bodies up to this size are kept
    to read their JSON ``model`` (every body streams to the upstream as it arrives); larger ones leave their
    requests without gen_ai.request.model, counted in ``stats.oversized_bodies`` (0 reads no body).
    ``max_line_bytes``: a longer stream line is not parsed (it is still
    relayed) and is counted. ``detect_bytes``: how many of a response's first bytes format detection may wait for
    (and hold) before it judges the response on them; the bytes themselves are relayed at once.
    ``measure=False`` relays and counts, and records nothing: the benchmark's control, what relaying alone costs.

    Connection limits, each counted in ``stats``: ``idle_timeout`` seconds a keep-alive client connection may sit
    between requests before it is closed; ``head_timeout`` seconds a request head, once begun, has to arrive whole
    (else 408 and the connection closes), and ``max_head_bytes`` bytes it may take (else 431); ``max_connections``
    client connections at most (None: 1,000, or fewer when the file-descriptor limit could not hold them), beyond
    which a new connection is answered 503 with ``Retry-After`` and closed; ``max_idle_upstream`` idle upstream
    connections kept for reuse. A response being relayed is never cut by a timeout: they run only between requests
    and while a request head is incomplete.

    Model names come from clients (the request body, the stream), so they are bounded (tokenlat/sidecar/models.py):
    ``models``, an allowlist, or else the first ``max_models`` distinct names; any other is recorded as ``_other``.

    Bad settings raise ValueError here, before anything listens.
    """

    def __init__(
        self,
        upstream: str,
        metrics: TokenMetrics,
        *,
        fmt: str | None = None,
        user_id_header: str | None = "x-user-id",
        request_id_header: str = "x-request-id",
        provider: str | None = None,
        max_json_body: int = MAX_JSON_BODY,
        max_line_bytes: int = MAX_LINE_BYTES,
        detect_bytes: int = DETECT_BYTES,
        measure: bool = True,
        idle_timeout: float = IDLE_TIMEOUT_S,
        head_timeout: float = HEAD_TIMEOUT_S,
        max_connections: int | None = None,
        max_idle_upstream: int = MAX_IDLE_UPSTREAM,
        max_head_bytes: int = MAX_HEAD_BYTES,
        models: Iterable[str] = (),
        max_models: int = MAX_MODELS,
    ) -> None:
        fmt = None if fmt in (None, "auto") else fmt
        if fmt is not None and fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}: must be auto or one of {', '.join(FORMATS)}")
        if detect_bytes < 1:
            raise ValueError(f"detect_bytes must be at least 1, got {detect_bytes}")
        if max_json_body < 0:
            raise ValueError(f"max_json_body must be at least 0, got {max_json_body}")
        if max_line_bytes < 1:
            raise ValueError(f"max_line_bytes must be at least 1, got {max_line_bytes}")
        for name, timeout in (("idle_timeout", idle_timeout), ("head_timeout", head_timeout)):
            if not timeout > 0:
                raise ValueError(f"{name} must be more than 0 seconds, got {timeout}")
        if max_head_bytes < 1:
            raise ValueError(f"max_head_bytes must be at least 1, got {max_head_bytes}")
        if max_idle_upstream < 0:
            raise ValueError(f"max_idle_upstream must be at least 0, got {max_idle_upstream}")
        if isinstance(models, str):
            raise TypeError("models must be an iterable of model names, not a single str")
        if max_models < 0:
            raise ValueError(f"max_models must be at least 0, got {max_models}")
        if max_connections is None:
            max_connections = default_max_connections(max_idle_upstream)
        elif max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {max_connections}")
        self.settings = Settings(
            upstream=validate_upstream(upstream),
            fmt=fmt,
            user_id_header=user_id_header.lower().encode() if user_id_header else None,  # as headers are compared
            request_id_header=request_id_header.lower().encode(),
            provider=provider or None,
            max_json_body=max_json_body,
            max_line_bytes=max_line_bytes,
            detect_bytes=detect_bytes,
            measure=measure,
            idle_timeout=idle_timeout,
            head_timeout=head_timeout,
            max_connections=max_connections,
            max_idle_upstream=max_idle_upstream,
            max_head_bytes=max_head_bytes,
            models=frozenset(models),
            max_models=max_models,
        )
        self.metrics = metrics
        self.stats = SidecarStats()
        self.measurer = Measurer(self.settings, metrics, self.stats)
        self.upstream = Upstream.of(self.settings.upstream)
        self.pool = UpstreamPool(self.upstream, lambda: UpstreamProtocol(self), self.stats, max_idle_upstream)
        self.connections: set[ClientProtocol] = set()
        self.refused: set[ClientProtocol] = set()  # answered 503 (too many connections), closing
        self.loop: asyncio.AbstractEventLoop | None = None  # the loop it serves in, for the connections' timers
        self.draining = False
        self._idle: asyncio.Event | None = None  # set whenever no request is in flight; made in the loop
        self._server: asyncio.Server | None = None
        self._closed = False

    # -- life cycle

    async def start(self, host: str, port: int) -> int:
        """Serve on ``host``:``port`` in the running loop; returns the bound port (``port`` 0 picks a free one)."""
        if self._server is not None:
            raise RuntimeError("this sidecar has been started already")
        self.loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        if self.stats.in_flight == 0:
            self._idle.set()
        sock = listening.bind(host, port)
        try:
            self._server = await asyncio.get_running_loop().create_server(lambda: ClientProtocol(self), sock=sock)
        except BaseException:
            sock.close()
            raise
        bound: int = sock.getsockname()[1]
        return bound

    def begin_drain(self) -> None:
        """Health answers 503 and new requests get 503, while in-flight ones go on; no connection is reused after.

        ``drain`` does this too; calling it first lets a load balancer notice before the port closes.
        """
        self.draining = True
        self.pool.reuse = False

    async def drain(self, timeout: float) -> bool:
        """Stop accepting connections, close the idle ones, and wait up to ``timeout`` seconds for the requests
        in flight to finish; True when they all did. ``close`` cuts what is left."""
        self.begin_drain()
        if self._server is not None:
            self._server.close()
        for connection in list(self.connections):
            if not connection.hops:  # idle keep-alive connections: nothing to wait for
                connection.close()
        if self._idle is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except asyncio.TimeoutError:
            log.warning("tokenlat sidecar: %d request(s) in flight at the drain timeout", self.stats.in_flight)
            return False
        return True

    async def close(self) -> None:
        """Stop at once: requests still in flight are cut (recorded as "cancelled"), every connection closes, and
        every chunk relayed is measured. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.begin_drain()
        if self._server is not None:
            self._server.close()
        for connection in [*self.connections, *self.refused]:
            connection.abort()
        # abort() reports connection_lost in a later turn of the loop, where what was cut is recorded as cancelled:
        # yield until every connection has, so that close() returns with everything recorded (then flushed).
        while self.connections or self.refused:
            await asyncio.sleep(0)
        self.pool.close()
        if self._server is not None:
            await self._server.wait_closed()

    # -- shared with the protocols

    def started(self) -> None:
        """A request is in flight."""
        self.stats.in_flight += 1
        if self._idle is not None:
            self._idle.clear()

    def ended(self) -> None:
        self.stats.in_flight -= 1
        if self.stats.in_flight == 0 and self._idle is not None:
            self._idle.set()

    def control(self, method: bytes, path: str) -> bytes:
        """The answer of one of the sidecar's own endpoints."""
        return control.answer(method, path, self.stats, self.draining)
