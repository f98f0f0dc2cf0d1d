"""The deployment renders checked by the tools that run or lint them: `systemd-analyze verify` and `security` on the
unit, Debian's `nginx -t` on the TLCP gateway's standard part, hadolint on collector/Dockerfile.

Each tool missing is a failure, never a skip (.ci/run installs them). Each check also runs once on a broken input,
so a tool that accepts anything (or prints its complaints where the test does not look) cannot pass unnoticed.
What none of them can check: Tengine's NTLS directives (Debian's nginx does not know them: they are cut out, and
the cut is asserted to be what nginx refuses), a unit actually started by systemd, an image actually built.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench import nginx as bench_nginx
from tests.conftest import REPO
from tokenlat_cli.operate import systemd, tlcp
from tokenlat_cli.profiles import builtin_names, load_profile
from tokenlat_cli.verify.certs import make_certificates

# systemd's own scale: 0 (locked down) .. 10 (unprotected); "OK" ends at 3.9. Ours is about 1.2.
MAX_EXPOSURE = 2.0


def _program(name: str, fallback: Path | None = None) -> str:
    found = shutil.which(name) or (str(fallback) if fallback and fallback.exists() else None)
    if not found:
        pytest.fail(f"end-to-end prerequisite missing: {name}")
    return found


def _run(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


# --- systemd ----------------------------------------------------------------------------------------------------


def _verify_unit(directory: Path, text: str) -> subprocess.CompletedProcess[str]:
    # The file name is the unit's name: verify checks the one named tokenlat-otelcol.service.
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "tokenlat-otelcol.service"
    path.write_text(text, encoding="utf-8")
    return _run(_program("systemd-analyze"), "verify", str(path))


@pytest.mark.parametrize("name", builtin_names())
def test_systemd_unit_verifies_clean_and_is_locked_down(name: str, tmp_path: Path, collector_binary: Path) -> None:
    """ExecStart points at the built Collector, a path that exists here; the rendered unit's /usr/local/bin path is
    where an operator installs it (verify refuses a missing binary, which this run would otherwise report)."""
    unit = systemd.unit(load_profile(name), binary=str(collector_binary))
    result = _verify_unit(tmp_path, unit)
    # verify exits 0 on unknown keys and bad values and only complains on stderr: both must be clean.
    assert result.returncode == 0 and not result.stderr.strip() and not result.stdout.strip(), result.stderr
    security = _run(
        _program("systemd-analyze"), "security", "--offline=yes", str(tmp_path / "tokenlat-otelcol.service")
    )
    level = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", security.stdout)
    assert level, security.stdout + security.stderr
    assert float(level[1]) <= MAX_EXPOSURE, security.stdout


def test_systemd_verify_complains_about_what_the_test_looks_for(tmp_path: Path, collector_binary: Path) -> None:
    unit = systemd.unit(load_profile("aliyun"), binary=str(collector_binary))
    broken = unit.replace("ProtectSystem=strict", "ProtectSystem=strictly").replace("MemoryMax=", "MemoryMaxx=")
    result = _verify_unit(tmp_path / "typo", broken)
    assert "ProtectSystem" in result.stderr or "protect system" in result.stderr.lower()
    assert "MemoryMaxx" in result.stderr
    missing = _verify_unit(tmp_path / "default", systemd.render(load_profile("aliyun")))
    if not Path(systemd.runtime.BINARY).exists():
        assert "is not executable" in missing.stderr


# --- the TLCP gateway with Debian's nginx -------------------------------------------------------------------------


def _without_tlcp(text: str, cert: Path, key: Path) -> str:
    """The gateway config with its Tongsuo-only lines replaced by standard TLS, as Debian's nginx can read it."""
    pattern = re.compile(rf"^(\s*){re.escape(tlcp.TLCP_BEGIN)}\n.*?^\s*{re.escape(tlcp.TLCP_END)}\n", re.M | re.S)
    replaced, count = pattern.subn(rf"\1ssl_certificate {cert};\n\1ssl_certificate_key {key};\n", text)
    assert count == 2
    return replaced


def _nginx_test(directory: Path, gateway: str) -> subprocess.CompletedProcess[str]:
    binary = bench_nginx.find_nginx()
    if binary is None:
        pytest.fail(f"end-to-end prerequisite missing: {bench_nginx.MISSING}")
    (directory / "gateway.conf").write_text(gateway, encoding="utf-8")
    (directory / "nginx.conf").write_text(
        f"error_log {directory}/error.log;\npid {directory}/nginx.pid;\nevents {{}}\n"
        f"http {{\n    access_log off;\n    include {directory}/gateway.conf;\n}}\n",
        encoding="utf-8",
    )
    return _run(binary, "-t", "-p", str(directory), "-c", str(directory / "nginx.conf"), "-e", str(directory / "e.log"))


@pytest.mark.parametrize("name", builtin_names())
def test_tlcp_gateway_is_valid_nginx_outside_the_ntls_lines(name: str, tmp_path: Path) -> None:
    """Certificates exist where the config names them (nginx -t loads every one), and the Collector's Service name
    is replaced by 127.0.0.1 (nginx -t resolves upstream hosts, and no cluster DNS answers here)."""
    profile = load_profile(name)
    certs = make_certificates(tmp_path / "certs")
    text = tlcp.render(profile).replace(tlcp.upstream_host(profile), "127.0.0.1")
    for path in tlcp.FILES.values():
        relative = Path(path).relative_to(tlcp.GATEWAY_DIR)
        target = tmp_path / "gateway" / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        source = certs.client_key if path.endswith(".key") else certs.ca if "ca" in relative.name else certs.client_cert
        shutil.copyfile(source, target)
    text = text.replace(tlcp.GATEWAY_DIR, str(tmp_path / "gateway"))
    result = _nginx_test(tmp_path, _without_tlcp(text, certs.server_cert, certs.server_key))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # The NTLS lines are exactly what a stock nginx refuses: the part this test cannot check is named, not hidden.
    refused = _nginx_test(tmp_path, text)
    assert refused.returncode != 0 and 'unknown directive "enable_ntls"' in refused.stderr


# --- hadolint -----------------------------------------------------------------------------------------------------


def test_dockerfile_passes_hadolint(tmp_path: Path) -> None:
    hadolint = _program("hadolint", Path(sys.executable).parent / "hadolint")
    result = _run(hadolint, str(REPO / "collector" / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr
    careless = tmp_path / "Dockerfile"
    careless.write_text("FROM golang:latest\nRUN apt-get update && apt-get install -y curl\n", encoding="utf-8")
    flagged = _run(hadolint, str(careless))
    assert flagged.returncode != 0 and "DL3007" in flagged.stdout  # :latest is flagged
