"""The least any proxy hop does: a TCP byte pipe on asyncio, no HTTP, nothing parsed or measured.

The sidecar benchmark runs its workload through one as a control: what a hop through a Python process costs on the
machine, with the same harness, so that the sidecar's added latency can be told apart from the floor any proxy
written in Python (or any extra process on the same cores) would add.

    server, port = await serve_byte_pipe("127.0.0.1", upstream_port)

Each client connection gets its own upstream connection; bytes go both ways as they arrive, and each side's flow
control holds the other (a full write buffer pauses reading from the peer).
"""

from __future__ import annotations

import asyncio


class _Side(asyncio.Protocol):
    """One connection of a pair; whatever it receives goes to its peer's transport."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Side | None = None
        self.pending: list[bytes] = []  # received before the peer was connected

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def join(self, peer: _Side) -> None:
        self.peer = peer
        for data in self.pending:
            self._forward(data)
        self.pending.clear()

    def data_received(self, data: bytes) -> None:
        if self.peer is None:
            self.pending.append(data)
        else:
            self._forward(data)

    def _forward(self, data: bytes) -> None:
        assert self.peer is not None and self.peer.transport is not None
        self.peer.transport.write(data)

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()


async def serve_byte_pipe(host: str, port: int) -> tuple[asyncio.Server, int]:
    """A pipe on 127.0.0.1 (a free port) to ``host:port``; returns the server and its port."""
    loop = asyncio.get_running_loop()

    connecting: set[asyncio.Task[None]] = set()  # referenced until done, or the loop could drop them

    def accepted() -> _Side:
        client = _Side()
        task = loop.create_task(connect(client))
        connecting.add(task)
        task.add_done_callback(connecting.discard)
        return client

    async def connect(client: _Side) -> None:
        try:
            transport, upstream = await loop.create_connection(_Side, host, port)
        except OSError:
            if client.transport is not None:
                client.transport.close()
            return
        if client.transport is None or client.transport.is_closing():  # the client left while we connected
            transport.close()
            return
        upstream.join(client)
        client.join(upstream)

    server = await loop.create_server(accepted, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]
