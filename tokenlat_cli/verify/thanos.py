"""A real Thanos for verify's thanos profile: Receive takes Prometheus remote write, Query reads it back.

For the thanos profile Receive runs as a single node with no hashring (it ingests everything locally into a TSDB in
the temp dir) and puts every series into the tenant named by the tenant header, which Query then shows as a
``tenant_id`` label; the scale-out run puts ingestors behind a router instead (thanos_hashring.py).
With ``tls`` its remote-write endpoint serves HTTPS and, given a client CA, refuses writers without a
certificate signed by it (mutual TLS).

Query learns a store's label sets (hence a new tenant's ``tenant_id``) from a gRPC Info call every 5 s and
skips stores whose labels cannot match a query; so a series written to a tenant that did not exist yet can take
up to 5 s to show up in Query: read back by polling.

The binary is built from Thanos's module source by `make thanos` (scripts/install-thanos.sh): `go install
...@version` is refused because Thanos's go.mod has replace directives, and the build needs Thanos's release
build tags (netgo, slicelabels).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import requests

from tokenlat_cli.binaries import cached_build_path, find_binary
from tokenlat_cli.verify.processes import ManagedProcess, ProcessGroup, ServiceError, free_port, http_ok

# The newest release that Go 1.26.8 builds (v0.42.5 asks for go >= 1.26.10). scripts/install-thanos.sh builds
# this version, and the Makefile reads it from this line.
THANOS_VERSION = "v0.42.4"
THANOS_ENV = "THANOS_BIN"
TENANT_HEADER = "THANOS-TENANT"
# The label Receive adds to a tenant's series (its --receive.tenant-label-name default).
TENANT_LABEL = "tenant_id"
START_TIMEOUT = 60.0
# Query discovers its store over gRPC; the first round can take a few seconds after it is ready.
STORE_TIMEOUT = 30.0


def thanos_install_path(version: str = THANOS_VERSION) -> Path:
    """Where `make thanos` puts the binary: the user's cache, outside the repository."""
    return cached_build_path("thanos", version)


def find_thanos() -> Path:
    """$THANOS_BIN, else the binary `make thanos` built, else thanos on PATH."""
    installed = thanos_install_path()
    how = f"run `make thanos` to build {THANOS_VERSION} into {installed.parent}"
    return find_binary("thanos", THANOS_ENV, how, ServiceError, [installed])


@dataclass
class ThanosReceive:
    process: ManagedProcess
    remote_write_url: str
    # The gRPC store API that Query reads from (host:port, plaintext).
    grpc_address: str
    # The status server: /-/ready, /metrics.
    http_url: str
    tenant_header: str
    # Where it takes replicated writes over Cap'n Proto (a hashring endpoint's capnproto_address).
    capnproto_address: str


def start_thanos_receive(
    group: ProcessGroup,
    workdir: Path,
    *,
    tls: tuple[Path, Path, Path | None] | None = None,
    tenant_header: str = TENANT_HEADER,
    name: str = "thanos receive",
    replica: str = "0",
    hashring: Path | None = None,
    replication_factor: int = 1,
) -> ThanosReceive:
    """Thanos Receive, its TSDB in ``workdir``; ready when /-/ready answers.

    Without ``hashring``: an ingestor (IngestorOnly in Thanos' terms) that stores everything it is sent, by remote
    write or forwarded by a router, under the external label receive_replica=``replica``; alone, it is the single
    node of verify's thanos profile. With ``hashring`` (a hashrings JSON file, see thanos_hashring.py): a router
    (RouterOnly) that ingests nothing and forwards each series to ``replication_factor`` of the ring's ingestors.
    Thanos v0.42.4 picks the mode from two flags (cmd/thanos/receive.go, determineMode): a hashring and no
    --receive.local-endpoint is RouterOnly, a hashring and a local endpoint RouterIngestor, no hashring
    IngestorOnly.

    ``tls`` is (server certificate, server key, client CA): HTTPS on the remote-write endpoint, and with a
    client CA, mutual TLS (a writer without a certificate signed by that CA is refused in the handshake).
    """
    slug = name.replace(" ", "-")
    grpc_address = f"127.0.0.1:{free_port()}"
    http_address = f"127.0.0.1:{free_port()}"
    write_address = f"127.0.0.1:{free_port()}"
    capnproto_address = f"127.0.0.1:{free_port()}"
    if hashring is None:
        # No hashring: ingest everything locally, announcing itself under this endpoint.
        role = [f"--receive.local-endpoint={grpc_address}"]
    else:
        # No local endpoint: a router only, which would otherwise also ingest its own share.
        role = [f"--receive.hashrings-file={hashring}", f"--receive.replication-factor={replication_factor}"]
    # Receive refuses to start without an external label, a router too (which stores nothing to put it on).
    role.append(f'--label=receive_replica="{replica}"')
    argv = [
        str(find_thanos()),
        "receive",
        f"--tsdb.path={workdir / f'{slug}-data'}",
        f"--grpc-address={grpc_address}",
        f"--http-address={http_address}",
        f"--remote-write.address={write_address}",
        # Every listener on a free loopback port: the default Cap'n Proto replication port (0.0.0.0:19391) would
        # collide with any other Receive on the machine.
        f"--receive.capnproto-address={capnproto_address}",
        *role,
        f"--receive.tenant-header={tenant_header}",
        # No retention (0d): with one, Receive v0.42.4 runs its tenant pruning at start-up whenever the minute of the
        # day is a multiple of 240 (00:00, 04:00 ... UTC), and it panics on a tenant whose TSDB is still opening
        # (MultiTSDB.Prune, tenant.shouldBeMarkedInactive: nil Head); a CI run at 16:00 failed so. The data lives in
        # verify's temp dir and goes with it.
        "--tsdb.retention=0d",
        "--log.level=info",
    ]
    scheme = "http"
    if tls is not None:
        cert, key, client_ca = tls
        argv += [f"--remote-write.server-tls-cert={cert}", f"--remote-write.server-tls-key={key}"]
        if client_ca is not None:
            argv.append(f"--remote-write.server-tls-client-ca={client_ca}")
        scheme = "https"
    process = group.start(name, argv, workdir / f"{slug}.log")
    http_url = f"http://{http_address}"
    process.wait_until(lambda: http_ok(f"{http_url}/-/ready"), START_TIMEOUT, "ready")
    return ThanosReceive(
        process=process,
        remote_write_url=f"{scheme}://{write_address}/api/v1/receive",
        grpc_address=grpc_address,
        http_url=http_url,
        tenant_header=tenant_header,
        capnproto_address=capnproto_address,
    )


def _store_discovered(url: str, store: str) -> bool:
    """Query lists ``store`` among its healthy stores (one that answered its Info call)."""
    try:
        response = requests.get(f"{url}/api/v1/stores", timeout=1)
        if response.status_code != 200:
            return False
        groups = response.json().get("data") or {}
    except (requests.RequestException, ValueError):
        return False
    return any(s.get("name") == store and not s.get("lastError") for stores in groups.values() for s in (stores or []))


def start_thanos_query(group: ProcessGroup, workdir: Path, store: str | Sequence[str]) -> str:
    """Thanos Query over one or more store APIs (``host:port``); returns its HTTP URL (Prometheus /api/v1/query).

    The stores' replicas of a series (the same labels but receive_replica) are merged into one series
    (--query.replica-label), so that an ingestor that is down leaves no hole while another holds the samples.
    Ready when /-/ready answers and every store has been discovered, so that a query right after start does
    not come back empty, or from fewer replicas, only because Query has not reached a store yet.
    """
    stores = [store] if isinstance(store, str) else list(store)
    http_address = f"127.0.0.1:{free_port()}"
    endpoints = "".join(f"  - address: {address}\n" for address in stores)
    argv = [
        str(find_thanos()),
        "query",
        f"--grpc-address=127.0.0.1:{free_port()}",
        f"--http-address={http_address}",
        f"--endpoint.sd-config=endpoints:\n{endpoints}",
        "--query.replica-label=receive_replica",
        "--log.level=info",
    ]
    process = group.start("thanos query", argv, workdir / "thanos-query.log")
    url = f"http://{http_address}"
    process.wait_until(lambda: http_ok(f"{url}/-/ready"), START_TIMEOUT, "ready")
    for address in stores:
        process.wait_until(
            lambda address=address: _store_discovered(url, address), STORE_TIMEOUT, f"connected to its store {address}"
        )
    return url
