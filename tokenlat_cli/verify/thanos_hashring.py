"""A Thanos Receive hashring as production runs one: ingestors behind a router, replicated, read through Query.

::

    remote write ──► router (RouterOnly: the hashring file, no local endpoint)
                       │ forwards every series to REPLICATION_FACTOR ingestors over gRPC (protobuf replication)
                       ├──► ingestor 0  (IngestorOnly, receive_replica="0") ─┐
                       ├──► ingestor 1  (IngestorOnly, receive_replica="1") ─┼──► Thanos Query, deduplicating
                       └──► ingestor 2  (IngestorOnly, receive_replica="2") ─┘    by receive_replica

With a replication factor of 3 the router answers a write once 2 of the 3 ingestors took it (its write quorum,
``rf/2 + 1``: pkg/receive/handler.go, writeQuorum), so one ingestor may be lost without losing a sample: the
router forwards to the other two and Query, which merges the replicas, answers from them.

The hashring file is the JSON Receive reads (pkg/receive/config.go, HashringConfig): one hashring with no tenant
list (every tenant), the ``ketama`` algorithm, and per endpoint its gRPC ``address`` and its
``capnproto_address``. An endpoint given without a Cap'n Proto address gets the address's host with the default
port 19391 (Endpoint.UnmarshalJSON); each ingestor here listens on a free port instead, so the file names it, for
the Cap'n Proto replication protocol as much as for identifying the endpoint. The router forwards over gRPC
(``--receive.replication-protocol`` protobuf, the default) to the addresses; the ingestors need no hashring.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenlat_cli.verify.processes import ProcessGroup
from tokenlat_cli.verify.thanos import TENANT_HEADER, ThanosReceive, start_thanos_query, start_thanos_receive

INGESTORS = 3
REPLICATION_FACTOR = 3
#: The hashring algorithm: ketama moves only a removed node's share when the ring changes (hashmod reshuffles most
#: series), which is what a production ring that grows or shrinks wants.
ALGORITHM = "ketama"


def write_quorum(replication_factor: int) -> int:
    """How many ingestors must take a write before the router answers it (Thanos' Handler.writeQuorum)."""
    return replication_factor // 2 + 1


def hashring_config(ingestors: list[ThanosReceive]) -> list[dict[str, object]]:
    """The hashrings file's content: one ring for every tenant over ``ingestors``."""
    endpoints = [{"address": i.grpc_address, "capnproto_address": i.capnproto_address} for i in ingestors]
    return [{"hashring": "default", "algorithm": ALGORITHM, "endpoints": endpoints}]


@dataclass
class ReceiveHashring:
    router: ThanosReceive
    ingestors: list[ThanosReceive]
    query_url: str
    replication_factor: int

    @property
    def remote_write_url(self) -> str:
        return self.router.remote_write_url


def start_receive_hashring(
    group: ProcessGroup,
    workdir: Path,
    *,
    tls: tuple[Path, Path, Path | None] | None = None,
    tenant_header: str = TENANT_HEADER,
    ingestors: int = INGESTORS,
    replication_factor: int = REPLICATION_FACTOR,
) -> ReceiveHashring:
    """The ingestors, then the router with the ring over them, then Query over the ingestors; all ready.

    ``tls`` secures the router's remote-write endpoint (as start_thanos_receive's); the router reaches the
    ingestors over plain gRPC on the loopback interface.
    """
    if replication_factor > ingestors:
        raise ValueError(f"replication factor {replication_factor} needs at least as many ingestors, got {ingestors}")
    members = [
        start_thanos_receive(group, workdir, tenant_header=tenant_header, name=f"thanos ingestor {n}", replica=str(n))
        for n in range(ingestors)
    ]
    ring = workdir / "hashrings.json"
    ring.write_text(json.dumps(hashring_config(members), indent=2) + "\n", encoding="utf-8")
    router = start_thanos_receive(
        group,
        workdir,
        tls=tls,
        tenant_header=tenant_header,
        name="thanos router",
        replica="router",
        hashring=ring,
        replication_factor=replication_factor,
    )
    query_url = start_thanos_query(group, workdir, [member.grpc_address for member in members])
    return ReceiveHashring(router, members, query_url, replication_factor)
