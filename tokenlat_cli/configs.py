"""The committed renders of the built-in profiles, rendered in one place: the Collector configs
(collector/configs/) and every other artefact (deploy/<profile>/, tokenlat_cli/artefacts.py).

`make configs` writes them (`python -m tokenlat_cli.configs`); tests compare them with a fresh render, so a
template or profile change that is not re-rendered and committed fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenlat_cli.artefacts import ARTEFACTS, render_artefact
from tokenlat_cli.files import write_atomically
from tokenlat_cli.operate.runtime import two_tier
from tokenlat_cli.profiles import builtin_names, load_profile
from tokenlat_cli.render import render_collector_config


def expected_configs() -> dict[str, str]:
    """File name -> rendered config: every built-in profile standalone, and as agent and gateway when it
    describes the two-tier layout (tiers.gateways)."""
    configs: dict[str, str] = {}
    for name in builtin_names():
        profile = load_profile(name)
        configs[f"{name}.yaml"] = render_collector_config(profile)
        if two_tier(profile):
            for role in ("agent", "gateway"):
                configs[f"{name}-{role}.yaml"] = render_collector_config(profile, role)
    return configs


def expected_artefacts() -> dict[str, str]:
    """Path under deploy/ -> rendered artefact, for every artefact of every built-in profile."""
    return {
        f"{name}/{artefact.filename}": render_artefact(artefact.name, load_profile(name))
        for name in builtin_names()
        for artefact in ARTEFACTS.values()
    }


def write_tree(directory: Path, expected: dict[str, str], pattern: str) -> None:
    """Write ``expected`` (relative path -> text) under ``directory``; remove files matching ``pattern`` there that
    nothing renders any more."""
    for stale in sorted({str(p.relative_to(directory)) for p in directory.glob(pattern)} - set(expected)):
        (directory / stale).unlink()
        print(f"removed {directory / stale} (no built-in profile renders it)")
    for name, text in expected.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        write_atomically(directory / name, text)
        print(f"wrote {directory / name}")


def main(argv: list[str]) -> int:
    root = Path(argv[0]) if argv else Path(".")
    write_tree(root / "collector" / "configs", expected_configs(), "*.yaml")
    write_tree(root / "deploy", expected_artefacts(), "*/*")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
