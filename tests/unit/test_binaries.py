"""The one rule for finding the programs tokenlat runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tokenlat_cli.binaries import find_binary


class Missing(RuntimeError):
    pass


def _tool(path: Path) -> Path:
    path.write_text("#!/bin/sh\n", encoding="utf-8")
    path.chmod(0o755)
    return path


def test_order_env_then_candidates_then_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    on_path = _tool(tmp_path / "tool")
    built = _tool(tmp_path / "built-tool")
    chosen = _tool(tmp_path / "chosen-tool")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TOOL_BIN", raising=False)
    assert find_binary("tool", "TOOL_BIN", "build it", Missing) == on_path
    assert find_binary("tool", "TOOL_BIN", "build it", Missing, [tmp_path / "absent", built]) == built
    monkeypatch.setenv("TOOL_BIN", str(chosen))
    assert find_binary("tool", "TOOL_BIN", "build it", Missing, [built]) == chosen


def test_errors_say_what_is_wrong_and_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TOOL_BIN", raising=False)
    with pytest.raises(Missing, match=r"^tool not found: run `make tool` \(or set TOOL_BIN to its path\)$"):
        find_binary("tool", "TOOL_BIN", "run `make tool`", Missing)
    (tmp_path / "not-executable").write_text("", encoding="utf-8")
    monkeypatch.setenv("TOOL_BIN", str(tmp_path / "not-executable"))
    with pytest.raises(Missing, match=r"TOOL_BIN=.*not-executable is not an executable file"):
        find_binary("tool", "TOOL_BIN", "run `make tool`", Missing)


def test_a_specific_build_is_not_stood_in_for_by_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _tool(tmp_path / "tool")
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("TOOL_BIN", raising=False)
    with pytest.raises(Missing, match=r"^tool not found: run `make tool`"):
        find_binary("tool", "TOOL_BIN", "run `make tool`", Missing, [tmp_path / "absent"], search_path=False)
    built = _tool(tmp_path / "built-tool")
    assert find_binary("tool", "TOOL_BIN", "run `make tool`", Missing, [built], search_path=False) == built
