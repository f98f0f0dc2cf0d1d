"""A real Thanos for verify's thanos profile: Receive takes Prometheus remote write, Query reads it back.

Receive runs as a single node with no hashring (it ingests everything locally into a TSDB in the temp dir) and
puts every series into the tenant named by the tenant header, which Query then shows as a ``tenant_id`` label.
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


def start_thanos_receive(
    group: ProcessGroup,
    workdir: Path,
    *,
    tls: tuple[Path, Path, Path | None] | None = None,
    tenant_header: str = TENANT_HEADER,
) -> ThanosReceive:
    """Thanos Receive as a single router+ingestor, its TSDB in ``workdir``; ready when /-/ready answers.

    ``tls`` is (server certificate, server key, client CA): HTTPS on the remote-write endpoint, and with a
    client CA, mutual TLS (a writer without a certificate signed by that CA is refused in the handshake).
    """
    grpc_address = f"127.0.0.1:{free_port()}"
    http_address = f"127.0.0.1:{free_port()}"
    write_address = f"127.0.0.1:{free_port()}"
    argv = [
        str(find_thanos()),
        "receive",
        f"--tsdb.path={workdir / 'thanos-receive-data'}",
        f"--grpc-address={grpc_address}",
        f"--http-address={http_address}",
        f"--remote-write.address={write_address}",
        # Every listener on a free loopback port: the default Cap'n Proto replication port (0.0.0.0:19391) would
        # collide with any other Receive on the machine.
        f"--receive.capnproto-address=127.0.0.1:{free_port()}",
        # No hashring: a single node that ingests everything locally, announcing itself under this endpoint.
        f"--receive.local-endpoint={grpc_address}",
        f"--receive.tenant-header={tenant_header}",
        '--label=receive_replica="0"',
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
    process = group.start("thanos receive", argv, workdir / "thanos-receive.log")
    http_url = f"http://{http_address}"
    process.wait_until(lambda: http_ok(f"{http_url}/-/ready"), START_TIMEOUT, "ready")
    return ThanosReceive(
        process=process,
        remote_write_url=f"{scheme}://{write_address}/api/v1/receive",
        grpc_address=grpc_address,
        http_url=http_url,
        tenant_header=tenant_header,
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


def start_thanos_query(group: ProcessGroup, workdir: Path, store: str) -> str:
    """Thanos Query over one store API (``host:port``); returns its HTTP URL (Prometheus /api/v1/query).

    Ready when /-/ready answers and the store has been discovered, so that a query right after start does
    not come back empty only because Query has not reached the store yet.
    """
    http_address = f"127.0.0.1:{free_port()}"
    argv = [
        str(find_thanos()),
        "query",
        f"--grpc-address=127.0.0.1:{free_port()}",
        f"--http-address={http_address}",
        f"--endpoint.sd-config=endpoints:\n  - address: {store}\n",
        "--query.replica-label=receive_replica",
        "--log.level=info",
    ]
    process = group.start("thanos query", argv, workdir / "thanos-query.log")
    url = f"http://{http_address}"
    process.wait_until(lambda: http_ok(f"{url}/-/ready"), START_TIMEOUT, "ready")
    process.wait_until(lambda: _store_discovered(url, store), STORE_TIMEOUT, f"connected to its store {store}")
    return url
