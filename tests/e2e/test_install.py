"""`pip install tokenlat` into a fresh virtualenv, as a model server's image would: the core records a request with
only the OpenTelemetry packages, installs none of the command line's or the sidecar's, and every optional part
names its extra in one line when used without it.

End to end because it builds the wheel and installs from PyPI (the registry a user installs from).
"""

from __future__ import annotations

import json
import subprocess
import sys
import venv
from pathlib import Path

import pytest

from tests.conftest import REPO

# The distributions only the extras bring (pyproject.toml): none may come with the core.
EXTRAS_ONLY = {
    *("click", "jinja2", "pyyaml", "aiohttp", "bcrypt", "cryptography"),  # [cli], [sm3]
    *("httptools", "yarl", "uvloop", "starlette"),  # [sidecar], [asgi]
}

RECORD_A_REQUEST = """
import tokenlat
from tokenlat.testing import CapturingExporter

exporter = CapturingExporter()
telemetry = tokenlat.configure(metric_exporter=exporter)
with telemetry.metrics.request({"gen_ai.request.model": "m"}, input_tokens=3) as rec:
    rec.tokens(1)
    rec.tokens(2)
telemetry.shutdown()
ttft = exporter.metric("gen_ai.server.time_to_first_token")
assert ttft is not None and ttft.data.data_points[0].count == 1, exporter.metrics()
print("recorded")
"""


def _run(command: list[str | Path], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=600, check=False, **kwargs)


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv (no system site-packages) with the wheel built from this checkout, without extras."""
    tmp = tmp_path_factory.mktemp("install")
    built = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", tmp / "dist", REPO])
    assert built.returncode == 0, built.stdout + built.stderr
    (wheel,) = (tmp / "dist").glob("tokenlat-*.whl")
    venv.create(tmp / "venv", with_pip=True)
    python = tmp / "venv" / "bin" / "python"
    installed = _run([python, "-m", "pip", "install", "--disable-pip-version-check", wheel])
    assert installed.returncode == 0, installed.stdout + installed.stderr
    return python


def test_the_core_records_a_request_with_opentelemetry_only(core_venv: Path) -> None:
    result = _run([core_venv, "-c", RECORD_A_REQUEST])
    assert result.returncode == 0 and result.stdout.strip() == "recorded", result.stdout + result.stderr
    listed = _run([core_venv, "-m", "pip", "list", "--format", "json", "--disable-pip-version-check"])
    names = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert "opentelemetry-sdk" in names and "tokenlat" in names, names
    assert not names & EXTRAS_ONLY, f"the core pulled in {sorted(names & EXTRAS_ONLY)}"
    typed = _run(
        [
            core_venv,
            "-c",
            "import pathlib, tokenlat; print(pathlib.Path(tokenlat.__file__).with_name('py.typed').exists())",
        ]
    )
    assert typed.stdout.strip() == "True", "py.typed must ship with the package"


@pytest.mark.parametrize(
    ("args", "extra"),
    [(["render", "--profile", "local"], "cli"), (["verify"], "cli"), (["sidecar", "--upstream", "x"], "sidecar")],
)
def test_a_command_without_its_extra_says_which_in_one_line(core_venv: Path, args: list[str], extra: str) -> None:
    result = _run([core_venv.with_name("tokenlat"), *args])
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"pip install 'tokenlat[{extra}]'" in result.stderr, result.stderr


@pytest.mark.parametrize(
    ("code", "extra"),
    [
        ("import tokenlat.sidecar", "sidecar"),
        (
            "import tokenlat; tokenlat.configure(metric_exporter=__import__('tokenlat.testing').testing"
            ".CapturingExporter(), environ={'TOKENLAT_USER_ID_KEY': 'k' * 32, 'TOKENLAT_USER_ID_HASH': 'sm3'})",
            "sm3",
        ),
    ],
)
def test_a_library_part_without_its_extra_names_it(core_venv: Path, code: str, extra: str) -> None:
    result = _run([core_venv, "-c", code])
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tokenlat.extras.MissingExtra:") and f"pip install 'tokenlat[{extra}]'" in last, last
