"""The real remote-write receivers verify stands up for each backend kind, with the profile's auth and TLS.

| kind                      | receiver                                   | auth and TLS as in production         |
|---------------------------|--------------------------------------------|---------------------------------------|
| prometheus, aliyun, tencent | Prometheus, remote-write receiver on     | --web.config.file: TLS, basic auth    |
| victoriametrics           | VictoriaMetrics single node                | -tls, -httpAuth.*                     |
| thanos                    | Thanos Receive (+ Thanos Query to read)    | THANOS-TENANT header, mutual TLS      |

Which Prometheus (Debian's 2.42 or the pinned 3.x) and the flags its version needs: prometheus.py.

The credentials are made per run. The Collector gets them the way an operator gives them: in the environment
variable the profile names; ``wrong_env`` is the same variable with a wrong value, for the check that a bad
credential fails visibly.
"""

from __future__ import annotations

import base64
import dataclasses
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import bcrypt
import yaml

from tokenlat_cli.binaries import find_binary
from tokenlat_cli.verify.certs import CertificateSet
from tokenlat_cli.verify.processes import ManagedProcess, ProcessGroup, ServiceError, free_port
from tokenlat_cli.verify.prometheus import Prometheus, find_prometheus
from tokenlat_cli.verify.promql import PrometheusClient
from tokenlat_cli.verify.services import START_TIMEOUT
from tokenlat_cli.verify.thanos import start_thanos_query, start_thanos_receive
from tokenlat_cli.verify.thanos_hashring import ReceiveHashring, start_receive_hashring

PROMETHEUS_KINDS = ("prometheus", "aliyun", "tencent")
VICTORIA_ENV = "VICTORIA_METRICS_BIN"


class UnsupportedBackend(ValueError):
    """A profile whose backend verify cannot stand up locally; the message says why."""


@dataclass
class Backend:
    description: str
    write_url: str
    query: PrometheusClient
    #: CA the Collector must trust for an https backend; client certificate where the backend asks for one.
    ca_file: str | None = None
    client_cert: tuple[str, str] | None = None
    #: Environment for the Collector: the credential the profile names, right and wrong.
    env: dict[str, str] = field(default_factory=dict)
    wrong_env: dict[str, str] | None = None
    #: thanos: the tenant the data must be stored under (label tenant_id).
    tenant: str | None = None
    processes: list[ManagedProcess] = field(default_factory=list)

    def wrong_credential(self) -> tuple[Backend, dict[str, str]] | None:
        """The same backend as a Collector with a wrong credential sees it (a wrong password, or no client
        certificate), and that Collector's environment; None when the backend takes no credential."""
        if self.wrong_env is not None:
            return self, self.wrong_env
        if self.client_cert is not None:
            return dataclasses.replace(self, client_cert=None), self.env
        return None


@dataclass(frozen=True)
class _Credentials:
    username: str
    password: str

    @classmethod
    def fresh(cls) -> _Credentials:
        return cls("tokenlat-verify", secrets.token_urlsafe(18))

    def basic_header_value(self, password: str | None = None) -> str:
        raw = f"{self.username}:{self.password if password is None else password}".encode()
        return base64.b64encode(raw).decode()


def check_backend_supported(profile_data: dict[str, Any]) -> None:
    backend = profile_data["backend"]
    if backend["auth"]["kind"] == "bearer":
        raise UnsupportedBackend(
            "backend.auth.kind bearer: no local receiver here checks bearer tokens (Prometheus' web config and "
            "VictoriaMetrics check basic auth only); verify basic auth, or none"
        )
    if backend["kind"] == "thanos" and backend["auth"]["kind"] != "none":
        raise UnsupportedBackend(
            "backend.auth: Thanos Receive authenticates by tenant and client certificate, not auth"
        )


def _credentials(profile_data: dict[str, Any]) -> tuple[_Credentials | None, dict[str, str], dict[str, str] | None]:
    auth = profile_data["backend"]["auth"]
    if auth["kind"] != "basic":
        return None, {}, None
    creds = _Credentials.fresh()
    var = auth["credentials_env"]
    return creds, {var: creds.basic_header_value()}, {var: creds.basic_header_value(password="wrong-" + creds.password)}


def _client(url: str, creds: _Credentials | None, certs: CertificateSet | None) -> PrometheusClient:
    return PrometheusClient(
        url,
        auth=(creds.username, creds.password) if creds else None,
        verify=str(certs.ca) if certs else True,
    )


def start_backend(group: ProcessGroup, workdir: Path, profile_data: dict[str, Any], certs: CertificateSet) -> Backend:
    """The receiver for the profile's backend kind, ready, with auth and TLS like the real one."""
    check_backend_supported(profile_data)
    kind = profile_data["backend"]["kind"]
    if kind in PROMETHEUS_KINDS:
        return _start_prometheus(group, workdir, profile_data, certs)
    if kind == "victoriametrics":
        return _start_victoria_metrics(group, workdir, profile_data, certs)
    return _start_thanos(group, workdir, profile_data, certs)


def _uses_tls(profile_data: dict[str, Any]) -> bool:
    """Cloud endpoints are https; a local/self-hosted profile says by its URL scheme."""
    kind, endpoint = profile_data["backend"]["kind"], profile_data["backend"]["endpoint"]
    return kind in ("aliyun", "tencent", "thanos") or endpoint.startswith("https://")


def _start_prometheus(
    group: ProcessGroup, workdir: Path, profile_data: dict[str, Any], certs: CertificateSet
) -> Backend:
    creds, env, wrong = _credentials(profile_data)
    tls = _uses_tls(profile_data)
    web: dict[str, Any] = {}
    if tls:
        web["tls_server_config"] = {"cert_file": str(certs.server_cert), "key_file": str(certs.server_key)}
    if creds:
        web["basic_auth_users"] = {creds.username: bcrypt.hashpw(creds.password.encode(), bcrypt.gensalt(4)).decode()}
    config = workdir / "prometheus.yml"
    config.write_text("global:\n  scrape_interval: 15s\nscrape_configs: []\n", encoding="utf-8")
    port = free_port()
    # The flags depend on the version (native histograms and exemplars): ask the binary which one it is.
    prometheus = Prometheus.probe(find_prometheus())
    argv = [
        str(prometheus.path),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'prometheus-data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *prometheus.receiver_flags(),
        "--storage.tsdb.retention.time=1d",
    ]
    if web:
        web_config = workdir / "prometheus-web.yml"
        web_config.write_text(yaml.safe_dump(web), encoding="utf-8")
        argv.append(f"--web.config.file={web_config}")
    process = group.start("prometheus", argv, workdir / "prometheus.log")
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    client = _client(url, creds, certs if tls else None)
    process.wait_until(lambda: client.ok("/-/ready"), START_TIMEOUT, "ready")
    parts = [p for p, on in (("TLS", tls), ("basic auth", creds is not None)) if on]
    return Backend(
        description=f"Prometheus {prometheus.version}{' with ' + ' and '.join(parts) if parts else ''}",
        write_url=f"{url}/api/v1/write",
        query=client,
        ca_file=str(certs.ca) if tls else None,
        env=env,
        wrong_env=wrong,
        processes=[process],
    )


def find_victoria_metrics() -> Path:
    """$VICTORIA_METRICS_BIN, else victoria-metrics on PATH (Debian's package)."""
    how = "install it (`apt-get install victoria-metrics`, or `make victoria-metrics`)"
    return find_binary("victoria-metrics", VICTORIA_ENV, how, ServiceError)


def _start_victoria_metrics(
    group: ProcessGroup, workdir: Path, profile_data: dict[str, Any], certs: CertificateSet
) -> Backend:
    creds, env, wrong = _credentials(profile_data)
    tls = _uses_tls(profile_data)
    port = free_port()
    argv = [
        str(find_victoria_metrics()),
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={workdir / 'victoria-metrics-data'}",
        "-retentionPeriod=1d",
        # Samples become searchable at once, not after the default cache interval.
        "-search.latencyOffset=0s",
        # verify polls until the data arrives: a cached early (partial) answer would never change.
        "-search.disableCache",
    ]
    if tls:
        argv += ["-tls", f"-tlsCertFile={certs.server_cert}", f"-tlsKeyFile={certs.server_key}"]
    if creds:
        argv += [f"-httpAuth.username={creds.username}", f"-httpAuth.password={creds.password}"]
    process = group.start("victoria-metrics", argv, workdir / "victoria-metrics.log")
    url = f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    client = _client(url, creds, certs if tls else None)
    process.wait_until(lambda: client.ok("/health"), START_TIMEOUT, "healthy")
    return Backend(
        description="VictoriaMetrics (single node)",
        write_url=f"{url}/api/v1/write",
        query=client,
        ca_file=str(certs.ca) if tls else None,
        env=env,
        wrong_env=wrong,
        processes=[process],
    )


def _thanos_tls(profile_data: dict[str, Any], certs: CertificateSet) -> tuple[Path, Path, Path | None]:
    """Receive's remote-write TLS: always HTTPS, mutual when the profile has a client certificate."""
    mutual = bool(profile_data["backend"]["tls"]["cert_file"])
    return certs.server_cert, certs.server_key, certs.ca if mutual else None


def _thanos_backend(
    description: str, write_url: str, query_url: str, profile_data: dict[str, Any], certs: CertificateSet
) -> Backend:
    mutual = _thanos_tls(profile_data, certs)[2] is not None
    tenant = profile_data["backend"]["tenant"]
    return Backend(
        description=f"{description} (tenant {tenant or 'default'}{', mutual TLS' if mutual else ''}) and Query",
        write_url=write_url,
        query=PrometheusClient(query_url),
        ca_file=str(certs.ca),
        client_cert=(str(certs.client_cert), str(certs.client_key)) if mutual else None,
        tenant=tenant or None,
    )


def _start_thanos(group: ProcessGroup, workdir: Path, profile_data: dict[str, Any], certs: CertificateSet) -> Backend:
    """Thanos Receive (tenant from the THANOS-TENANT header; mutual TLS when the profile has a client certificate),
    read back through Thanos Query."""
    receive = start_thanos_receive(group, workdir, tls=_thanos_tls(profile_data, certs))
    query_url = start_thanos_query(group, workdir, receive.grpc_address)
    backend = _thanos_backend("Thanos Receive", receive.remote_write_url, query_url, profile_data, certs)
    backend.processes.append(receive.process)
    return backend


def start_thanos_hashring_backend(
    group: ProcessGroup, workdir: Path, profile_data: dict[str, Any], certs: CertificateSet
) -> tuple[Backend, ReceiveHashring]:
    """The thanos profile's backend as a hashring (thanos_hashring.py): the router takes the remote write with the
    profile's tenant and TLS, as the single Receive does, and Query reads the ingestors' replicas back as one."""
    check_backend_supported(profile_data)
    if profile_data["backend"]["kind"] != "thanos":
        raise UnsupportedBackend(f"backend.kind {profile_data['backend']['kind']}: a Receive hashring is Thanos'")
    ring = start_receive_hashring(group, workdir, tls=_thanos_tls(profile_data, certs))
    description = (
        f"Thanos Receive hashring ({len(ring.ingestors)} ingestors behind a router, "
        f"replication factor {ring.replication_factor})"
    )
    backend = _thanos_backend(description, ring.remote_write_url, ring.query_url, profile_data, certs)
    backend.processes.extend([ring.router.process, *(i.process for i in ring.ingestors)])
    return backend, ring
