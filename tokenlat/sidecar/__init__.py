"""A zero-intrusion streaming reverse proxy that measures token latency from outside the model server.

    sidecar = Sidecar("http://127.0.0.1:8000", telemetry.metrics)
    port = await sidecar.start("127.0.0.1", 9000)
    ...
    sidecar.begin_drain()       # health turns 503, new requests get 503
    await sidecar.drain(30.0)   # stops listening, lets in-flight streams finish (up to 30 s)
    await sidecar.close()       # cuts what is left, closes every connection

Clients talk to the sidecar instead of the server and get exactly the bytes the server sent: any method, path,
query and body; status and headers minus the hop-by-hop ones; bodies relayed chunk by chunk, never decompressed
or recompressed. When a response is a token stream (``tokenlat.detect``: from the path, the content type and its
first bytes, waiting for a complete first event however the network cuts them; or a fixed ``fmt``), the sidecar
parses a copy of each chunk and records the request's TTFT, per-token gaps, duration and usage with a
``RequestRecorder`` whose start is the request's arrival. A chunk is measured after it has been relayed (and after
the other chunks ready at that moment), with the time it arrived: measuring and detecting cost CPU, but a chunk
never waits for its own parse, nor for those of chunks that arrived with it. A response that looked like a stream
(an event stream or NDJSON) that no format recognised is relayed, counted (``unrecognised_streams``, and the
metric of that name) and warned about once per path and content type.

Failures are recorded as error.type and counted in :class:`SidecarStats` (``GET /-/tokenlat/stats``):

    upstream answers 4xx/5xx to a would-be stream    error.type = the status ("503"); the response passes through
    upstream refuses the connection                  502 + short JSON body; "upstream_unavailable"
    upstream breaks off (before or during the body)  502 before the headers; after them the client connection is
                                                     closed so the client sees a broken stream; "upstream_reset"
    client goes away                                 upstream connection closed at once (the server can stop
                                                     generating); "cancelled"
    an error event inside the stream                 still relayed as is; "upstream_error"

A "would-be stream" is a request that asked for a stream: ``"stream": true`` in its JSON body, a path whose last
segment names a stream (``generate_stream``, ``streamGenerateContent``), or Ollama's ``/api/chat`` and
``/api/generate``, which stream unless the body says ``"stream": false``. Only such requests and token-stream
responses are recorded; everything else is relayed and counted as pass-through.

The sidecar's own endpoints live under ``/-/tokenlat/``: a path segment of "-" is used by no inference API, and
the whole prefix is reserved, so a request there never reaches the upstream.

The package, one concern a module:

    server.py    ``Sidecar``: settings, counters, connections; start, drain, close
    protocol.py  the asyncio protocols of both sides (httptools parsing), pipelining, head reading
    hop.py       one request relayed: request onto an upstream connection, response back, failures
    pool.py      the upstream keep-alive pool
    flow.py      flow control: a full buffer on one side pauses reading on the other
    measure.py   the measuring of an exchange: detection, parsing, recording, stream-or-not
    control.py   the sidecar's own endpoints (health, stats)
    settings.py  settings, checked at construction; the upstream's address
    stats.py     ``SidecarStats`` and the error.type values
    http1.py     the HTTP/1.1 pieces the sidecar writes (heads, framing)
"""

from tokenlat.extras import require

require("sidecar", "the sidecar")  # before any import of httptools or yarl: without the extra, one line, no traceback

from tokenlat.sidecar.control import CONTROL_PREFIX, HEALTH_PATH, STATS_PATH  # noqa: E402
from tokenlat.sidecar.measure import operation_name  # noqa: E402
from tokenlat.sidecar.server import LISTENING_NAME, LISTENING_PREFIX, Sidecar  # noqa: E402
from tokenlat.sidecar.settings import CONNECT_TIMEOUT_S, validate_upstream  # noqa: E402
from tokenlat.sidecar.stats import (  # noqa: E402
    PARSER_FAILURE,
    UNRECOGNISED_STREAMS,
    UPSTREAM_ERROR,
    UPSTREAM_RESET,
    UPSTREAM_UNAVAILABLE,
    SidecarStats,
)

__all__ = [
    "CONNECT_TIMEOUT_S",
    "CONTROL_PREFIX",
    "HEALTH_PATH",
    "LISTENING_NAME",
    "LISTENING_PREFIX",
    "PARSER_FAILURE",
    "STATS_PATH",
    "UNRECOGNISED_STREAMS",
    "UPSTREAM_ERROR",
    "UPSTREAM_RESET",
    "UPSTREAM_UNAVAILABLE",
    "Sidecar",
    "SidecarStats",
    "operation_name",
    "validate_upstream",
]
