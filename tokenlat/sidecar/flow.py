"""Flow control: a proxy must never buffer without bound, so a full buffer on one side slows reading on the other.

asyncio tells a protocol when its transport's write buffer passes the high-water mark (``pause_writing``) and when
it drains below the low one (``resume_writing``); a protocol stops its transport from reading with
``pause_reading``. A proxy couples the two across its connections:

    response side   the client's write buffer is full   ->  stop reading the upstream (and TCP slows the upstream)
    request side    the upstream's write buffer is full ->  stop reading the client's body

``FlowControl`` is one connection's half of that: whether its writing is paused, and pausing and resuming its
reading exactly once each way (asyncio transports accept a repeated call, but the flags let a protocol know its
state without asking the transport, and make the decisions below cheap).
"""

from __future__ import annotations

import asyncio

# Request body bytes queued for an upstream connection still being opened, before the client is paused: the
# only buffer of the sidecar's own, the transports' being bounded by their high-water marks.
PENDING_LIMIT = 1 << 20


class FlowControl:
    """One connection's reading and writing state."""

    __slots__ = ("read_paused", "transport", "write_paused")

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.read_paused = False
        self.write_paused = False

    def pause_reading(self) -> None:
        if not self.read_paused:
            self.read_paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
