"""What `tokenlat render --what` writes from a profile: one table, one renderer module each.

The Collector config (``--what collector``, the default) is rendered by tokenlat_cli/render.py and committed
under collector/configs/. Everything that operates on what it delivers (rules, the dashboard, alert routing,
autoscaling, deployment) has a module of its own with a ``render(profile) -> str`` function, imported only when
asked for, so that a missing optional package (the dashboard SDK) breaks only its own artefact. Every artefact of
every built-in profile is committed under deploy/<profile>/ by `make configs`, and a test renders them again to
catch drift.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from tokenlat_cli.profiles import Profile


@dataclass(frozen=True)
class Artefact:
    name: str  # the --what value
    filename: str  # under deploy/<profile>/
    module: str  # where render(profile) -> str lives
    summary: str

    def renderer(self) -> Callable[[Profile], str]:
        render: Callable[[Profile], str] = importlib.import_module(self.module).render
        return render


_ARTEFACTS: tuple[Artefact, ...] = (
    # one line per artefact, in the order `render --help` lists them
)
ARTEFACTS: dict[str, Artefact] = {a.name: a for a in _ARTEFACTS}


def render_artefact(name: str, profile: Profile) -> str:
    """The text of artefact ``name`` for ``profile``; KeyError for an unknown name."""
    return ARTEFACTS[name].renderer()(profile)
