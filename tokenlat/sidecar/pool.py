"""The upstream keep-alive pool: a connection per request in flight, reused by the next request.

Opening a TCP (and maybe TLS) connection per request would add a round trip, or several, to every TTFT the
sidecar is there to measure; so a connection whose response ended cleanly goes back to the pool, and the next
request takes the most recently used one (the likeliest to be still open at the server). Connections in use are
not limited here: the sidecar opens as many as its clients have requests in flight (at most one per client
connection, whose number is capped), as the model server would have seen without it. Idle ones are: at most
``max_idle`` are kept, and a connection released beyond that closes (counted as ``upstream_idle_closed``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

from tokenlat.sidecar.settings import CONNECT_TIMEOUT_S, MAX_IDLE_UPSTREAM, Upstream
from tokenlat.sidecar.stats import SidecarStats

if TYPE_CHECKING:
    from tokenlat.sidecar.hop import Hop
    from tokenlat.sidecar.protocol import UpstreamProtocol


class UpstreamPool:
    """Kept-alive upstream connections, and the ones being opened."""

    def __init__(
        self,
        upstream: Upstream,
        protocol: Callable[[], UpstreamProtocol],
        stats: SidecarStats | None = None,
        max_idle: int = MAX_IDLE_UPSTREAM,
    ) -> None:
        self.upstream = upstream
        self._protocol = protocol
        self.stats = stats if stats is not None else SidecarStats()
        self.max_idle = max_idle
        self.idle: list[UpstreamProtocol] = []  # most recently used last
        self._connecting: set[asyncio.Task[None]] = set()
        self.reuse = True  # False once draining: a connection whose response ended closes

    def lease(self, hop: Hop) -> None:
        """Give ``hop`` a kept-alive upstream connection, or open one for it."""
        while self.idle:
            connection = self.idle.pop()
            if not connection.transport.is_closing():
                hop.attach(connection)
                return
        task = asyncio.get_running_loop().create_task(self._connect(hop))
        self._connecting.add(task)
        task.add_done_callback(self._connecting.discard)

    async def _connect(self, hop: Hop) -> None:
        loop, upstream = asyncio.get_running_loop(), self.upstream
        try:
            _, connection = await asyncio.wait_for(
                loop.create_connection(
                    self._protocol,
                    upstream.host,
                    upstream.port,
                    ssl=upstream.ssl,
                    server_hostname=upstream.host if upstream.ssl else None,
                ),
                CONNECT_TIMEOUT_S,
            )
        except (OSError, asyncio.TimeoutError) as exc:
            hop.unavailable(f"upstream unavailable: {exc or type(exc).__name__}")
            return
        if hop.finished:  # the client left while the connection was being opened
            connection.transport.close()
            return
        hop.attach(connection)

    def release(self, connection: UpstreamProtocol) -> None:
        """A connection whose response ended cleanly: back to the pool, unless draining, it is closing, or the pool
        holds ``max_idle`` already."""
        if not self.reuse or connection.transport.is_closing():
            connection.transport.close()
        elif len(self.idle) >= self.max_idle:
            self.stats.upstream_idle_closed += 1
            connection.transport.close()
        else:
            self.idle.append(connection)

    def discard(self, connection: UpstreamProtocol) -> None:
        """A connection that closed (by either side): never leased again."""
        if connection in self.idle:
            self.idle.remove(connection)

    def close(self) -> None:
        """Close the idle connections; those in use close when their responses end."""
        self.reuse = False
        for connection in self.idle:
            connection.transport.close()
        self.idle.clear()
