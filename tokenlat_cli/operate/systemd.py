"""A hardened systemd unit that runs a profile's Collector on a host (`tokenlat render --what systemd`).

The service runs as a transient user (DynamicUser=yes): nothing to create, and nothing the Collector writes
survives outside its state directory. Secrets stay out of the unit: systemd reads them, as root, from an
EnvironmentFile (`--what environment-file` lists the variable names) before it drops privileges. Certificate keys,
which the transient user cannot read where root keeps them, are handed over with LoadCredential= (systemd copies
them into a private directory owned by the service) and bound read-only onto the paths the config names, so the
rendered Collector config is the same file on a host as in a pod.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from tokenlat_cli.operate import runtime
from tokenlat_cli.profiles import Profile

CONFIG = "/etc/tokenlat/otelcol.yaml"
ENVIRONMENT_FILE = "/etc/tokenlat/otelcol.env"
STATE_ROOT = PurePosixPath("/var/lib")

# Everything the Collector does not need is taken away; each line is a systemd.exec(5) setting. The Collector is a
# static Go binary that opens sockets and files: no devices, kernel tunables, namespaces, SUID or W+X memory.
_HARDENING = """\
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
PrivateUsers=yes
NoNewPrivileges=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
ProcSubset=pid
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
RemoveIPC=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
UMask=0077
"""


def credential_name(path: str) -> str:
    """The credential a TLS file is loaded as: its directory's and its own name, unique for the profiles' layouts
    (/etc/tokenlat/tls/server.key -> tls-server.key)."""
    p = PurePosixPath(path)
    return f"{p.parent.name}-{p.name}"


def _capabilities(profile: Profile) -> list[str]:
    """No capability at all, unless a port below 1024 must be bound."""
    if any(p.port < 1024 for p in runtime.ports(profile)):
        return ["AmbientCapabilities=CAP_NET_BIND_SERVICE", "CapabilityBoundingSet=CAP_NET_BIND_SERVICE"]
    return ["CapabilityBoundingSet="]


def _state(profile: Profile) -> list[str]:
    """Where the Collector may write: the WAL directory (a StateDirectory when under /var/lib, so systemd creates it
    and gives it to the transient user), nothing otherwise."""
    wal = profile.data["backend"]["wal"]
    if not wal["enabled"]:
        return []
    directory = PurePosixPath(wal["directory"])
    if directory.is_relative_to(STATE_ROOT):
        return [f"StateDirectory={directory.relative_to(STATE_ROOT)}", "StateDirectoryMode=0700"]
    return [f"ReadWritePaths={directory}"]


def unit(profile: Profile, binary: str = runtime.BINARY) -> str:
    """The unit text; ``binary`` is where the Collector is installed (the end-to-end test points it at the build)."""
    memory = runtime.memory(profile)
    credentials = [(credential_name(path), path) for path in runtime.tls_files(profile)]
    roles = " or ".join(f"--role {t.role}" for t in runtime.tiers(profile) if t.role != "standalone")
    two_tier = f" (two-tier layout: add {roles} for the host's role)" if roles else ""
    lines = [
        f"# tokenlat Collector under systemd, rendered by `tokenlat render --profile {profile.name} --what systemd`.",
        "# Install (docs/deploy.md): the binary at " + binary + ", the config rendered by",
        f"#   tokenlat render --profile {profile.name} -o {CONFIG}{two_tier}",
        f"# the secrets in {ENVIRONMENT_FILE} (root:root 0600; `--what environment-file` lists the names), then",
        "#   systemctl daemon-reload && systemctl enable --now tokenlat-otelcol",
        *(f"# {line}" for line in memory.explanation()),
        "",
        "[Unit]",
        f"Description=tokenlat OpenTelemetry Collector (profile {profile.name})",
        "Wants=network-online.target",
        "After=network-online.target",
        "",
        "[Service]",
        "Type=exec",
        f"ExecStart={binary} --config={CONFIG}",
        # Read by systemd as root before the service starts: the file can stay unreadable to the service user.
        f"EnvironmentFile={ENVIRONMENT_FILE}",
        f"Environment=GOMEMLIMIT={memory.gomemlimit}",
        f"MemoryMax={memory.hard_limit_mib}M",
        # Swap would hide the memory pressure memory_limiter acts on, and slow everything instead of refusing.
        "MemorySwapMax=0",
        "LimitNOFILE=65536",
        # The Collector drains its queues on SIGTERM; give it the time the Kubernetes manifests give it.
        "TimeoutStopSec=30s",
        "Restart=on-failure",
        "RestartSec=5s",
        "DynamicUser=yes",
        *_state(profile),
        *(f"LoadCredential={name}:{path}" for name, path in credentials),
        *(f"BindReadOnlyPaths=%d/{name}:{path}" for name, path in credentials),
        *_capabilities(profile),
        _HARDENING.rstrip("\n"),
        "",
        "[Install]",
        "WantedBy=multi-user.target",
    ]
    return "\n".join(lines) + "\n"


def render(profile: Profile) -> str:
    return unit(profile)
