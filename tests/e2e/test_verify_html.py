"""`tokenlat verify --html` end to end: a real run's page renders in headless Chromium (a missing Chromium fails, as
every e2e prerequisite does)."""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import signal
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from tests.subprocesses import failed_first, verify_subprocess
from tests.unit.test_verify_html import METRICS, _Page
from tokenlat_cli.verify import html_report
from tokenlat_cli.verify.html_report import METRIC_TITLES

CHROMIUM_ENV = "TOKENLAT_CHROMIUM_BIN"
ANSWER_RGB = bytes.fromhex(html_report.ANSWER[1:])
CURVE_RGB = bytes.fromhex(html_report.CURVE[1:])


def _chromium() -> str:
    found = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not found:
        pytest.fail(
            f"end-to-end prerequisite missing: chromium is not on PATH (set ${CHROMIUM_ENV}, or "
            "`apt-get install --no-install-recommends chromium`)"
        )
    return found


def _run_chromium(binary: str, profile: Path, *args: str, timeout: float = 120) -> str:
    """Run headless Chromium in a session of its own and return its stdout. The whole process group is killed
    afterwards, however the run ended: a timeout would otherwise only kill the browser, not its zygote, renderer
    and GPU children."""
    command = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
               "--force-color-profile=srgb", "--hide-scrollbars", f"--user-data-dir={profile}", *args]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == 0, f"{command} exited with {proc.returncode}: {err[-3000:]}"
    return out


def _png_pixels(data: bytes) -> tuple[int, int, list[bytes]]:
    """(width, height, RGB pixels) of an 8-bit RGB or RGBA, non-interlaced PNG (what Chromium writes): enough of
    PNG to look at a screenshot without an imaging library."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    header = b""
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        if kind == b"IHDR":
            header = data[pos + 8 : pos + 8 + length]
        elif kind == b"IDAT":
            idat.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", header)
    assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
    bpp = 3 if colour == 2 else 4
    raw, stride = zlib.decompress(b"".join(idat)), width * bpp
    previous = bytearray(stride)
    pixels: list[bytes] = []
    for row in range(height):
        kind = raw[row * (stride + 1)]
        line = bytearray(raw[row * (stride + 1) + 1 : (row + 1) * (stride + 1)])
        _unfilter(kind, line, previous, bpp)
        pixels.extend(bytes(line[i : i + 3]) for i in range(0, stride, bpp))
        previous = line
    return width, height, pixels


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    """Undo one scanline's PNG filter in place (None, Sub, Up, Average, Paeth)."""
    if kind == 1:
        for i in range(bpp, len(line)):
            line[i] = (line[i] + line[i - bpp]) & 0xFF
    elif kind == 2:
        line[:] = bytes((a + b) & 0xFF for a, b in zip(line, previous, strict=True))
    elif kind == 3:
        for i in range(len(line)):
            left = line[i - bpp] if i >= bpp else 0
            line[i] = (line[i] + (left + previous[i]) // 2) & 0xFF
    elif kind == 4:
        for i in range(len(line)):
            a = line[i - bpp] if i >= bpp else 0
            b, c = previous[i], (previous[i - bpp] if i >= bpp else 0)
            p = a + b - c
            pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
            line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
    else:
        assert kind == 0, f"unknown PNG filter {kind}"


def test_verify_html_page_renders_in_chromium(collector_binary: Path, prometheus_binary: Path, tmp_path: Path) -> None:
    chromium = _chromium()
    page = tmp_path / "verify.html"
    result = verify_subprocess(["--profile", "local", "--requests", "100", "--concurrency", "20", "--html", str(page)])
    assert result.returncode == 0 and "verify PASSED" in result.stdout, failed_first(result)
    markup = page.read_text(encoding="utf-8")
    assert len(markup.encode()) < 150_000
    url = page.as_uri()

    dom = _Page(_run_chromium(chromium, tmp_path / "chromium-dom", "--dump-dom", url))
    for metric in METRICS:
        assert dom.h2.count(METRIC_TITLES[metric]) == 1, dom.h2
        assert metric in dom.text
    assert "requests that succeeded" in dom.text and "PASSED" in dom.text

    screenshot = tmp_path / "verify.png"
    _run_chromium(chromium, tmp_path / "chromium-shot", f"--screenshot={screenshot}", "--window-size=1200,2400", url)
    width, height, pixels = _png_pixels(screenshot.read_bytes())
    assert (width, height) == (1200, 2400)
    colours = collections.Counter(pixels)
    non_white = 1 - colours[b"\xff\xff\xff"] / len(pixels)
    assert 0.05 < non_white < 0.9, f"{non_white:.1%} of the screenshot is not white"
    assert len(colours) > 200, "text and anti-aliased curves make hundreds of colours"
    # The curves and the answer markers are drawn, in their own colours (inside 2400 px: all four charts).
    assert colours[CURVE_RGB] > 500 and colours[ANSWER_RGB] > 100, (colours[CURVE_RGB], colours[ANSWER_RGB])
