"""nginx as the reference proxy of the sidecar benchmark: what users would otherwise put in the path.

A plain streaming reverse proxy, as an operator would configure one in front of a model server: one process
(``master_process off``, so that its CPU time is the proxy's whole cost), ``proxy_buffering off`` (each chunk is
relayed as it arrives, as token streams need), HTTP/1.1 with kept-alive upstream connections (``keepalive`` and an
empty Connection header), the access log on. Everything it writes (config, logs, pid file, temp dirs) is in a
temporary directory removed afterwards, and the process is stopped however the block is left.

nginx comes from Debian (``make nginx``: ``apt-get install nginx``); ``$NGINX_BIN`` names another binary.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from yarl import URL

from tokenlat_cli.verify.processes import free_port

MISSING = (
    "nginx is missing: install it (make nginx, or apt-get install nginx as root), set NGINX_BIN to its path, or run"
    " the sidecar bench with --reference none"
)
# Where Debian puts it: not on a non-root user's PATH.
_DEBIAN_PATH = "/usr/sbin/nginx"
_START_TIMEOUT_S = 30.0

_CONF = """\
daemon off;
master_process off;
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    upstream model {{
        server {upstream_host}:{upstream_port};
        keepalive 256;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://model;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""


def find_nginx() -> str | None:
    """``$NGINX_BIN``, else ``nginx`` on PATH, else Debian's /usr/sbin/nginx; None when there is none."""
    explicit = os.environ.get("NGINX_BIN")
    if explicit:
        return explicit
    found = shutil.which("nginx")
    if found:
        return found
    return _DEBIAN_PATH if os.access(_DEBIAN_PATH, os.X_OK) else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` so far, from /proc/PID/stat (in clock ticks, 10 ms here)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14 and 15


class Nginx:
    """A running nginx, with the bench's child interface: its URL, and its CPU time between start and stop."""

    name = "nginx"

    def __init__(self, process: subprocess.Popen[bytes], port: int) -> None:
        self.process = process
        self.url = f"http://127.0.0.1:{port}"
        self._cpu = 0.0

    def start(self) -> None:
        self._cpu = cpu_seconds(self.process.pid)

    def stop(self) -> dict[str, Any]:
        return {"cpu_seconds": cpu_seconds(self.process.pid) - self._cpu}


def _die_with_the_bench() -> None:
    """In the child, before exec: SIGTERM when the bench dies, even by SIGKILL (no finally runs then), so that no
    nginx outlives it (Linux's PR_SET_PDEATHSIG; elsewhere the finally below is all there is)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def nginx_proxy(upstream: str) -> Iterator[Nginx]:
    """nginx relaying to ``upstream`` (http://HOST:PORT), stopped and cleaned up however the block is left."""
    binary = find_nginx()
    if binary is None:
        raise RuntimeError(MISSING)
    url = URL(upstream)
    with tempfile.TemporaryDirectory(prefix="tokenlat-bench-nginx-") as tmp:
        port = free_port()
        conf = Path(tmp, "nginx.conf")
        conf.write_text(_CONF.format(tmp=tmp, upstream_host=url.host, upstream_port=url.port, port=port))
        output = Path(tmp, "output.log")
        with output.open("wb") as out:
            # -e: the error log from the start, before the config is read (else the default path, maybe unwritable).
            argv = [binary, "-p", tmp, "-c", str(conf), "-e", f"{tmp}/error.log"]
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                preexec_fn=_die_with_the_bench,  # safe: no other thread runs in the bench when it starts nginx
            )
        try:
            deadline = time.monotonic() + _START_TIMEOUT_S
            while not _accepts(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    logs = output.read_text(errors="replace") + _tail(Path(tmp, "error.log"))
                    state = f"exited with code {process.returncode}" if process.returncode is not None else "timed out"
                    raise RuntimeError(f"nginx ({binary}) did not start: {state}\n{logs}")
                time.sleep(0.01)  # polling the port: nginx says nothing when it is ready
            yield Nginx(process, port)
        finally:
            process.terminate()  # SIGTERM: nginx's fast shutdown
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _tail(path: Path, chars: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""
