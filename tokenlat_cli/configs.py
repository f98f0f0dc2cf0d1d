"""The committed configs of the built-in profiles (collector/configs/), rendered in one place.

`make configs` writes them (`python -m tokenlat_cli.configs DIR`); a test compares them with a fresh render,
so a template or profile change that is not re-rendered and committed fails CI.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tokenlat_cli.files import write_atomically
from tokenlat_cli.profiles import builtin_names, load_profile
from tokenlat_cli.render import render_collector_config


def expected_configs() -> dict[str, str]:
    """File name -> rendered config: every built-in profile standalone, and as agent and gateway when it
    describes the two-tier layout (traces with gateways)."""
    configs: dict[str, str] = {}
    for name in builtin_names():
        profile = load_profile(name)
        configs[f"{name}.yaml"] = render_collector_config(profile)
        if profile.data["traces"]["enabled"] and profile.data["traces"]["gateways"]:
            for role in ("agent", "gateway"):
                configs[f"{name}-{role}.yaml"] = render_collector_config(profile, role)
    return configs


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else Path("collector/configs")
    expected = expected_configs()
    for stale in sorted(set(p.name for p in directory.glob("*.yaml")) - set(expected)):
        (directory / stale).unlink()
        print(f"removed {directory / stale} (no built-in profile renders it)")
    for name, text in expected.items():
        write_atomically(directory / name, text)
        print(f"wrote {directory / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
