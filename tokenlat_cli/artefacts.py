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
    Artefact("rules", "rules.yaml", "tokenlat_cli.operate.rules", "Prometheus recording and alerting rules"),
    Artefact("alertmanager", "alertmanager.yaml", "tokenlat_cli.operate.alertmanager", "routes to the alert relay"),
    Artefact("dashboard", "dashboard.json", "tokenlat_cli.operate.dashboard", "Grafana dashboard"),
    Artefact("k8s", "k8s.yaml", "tokenlat_cli.operate.kubernetes", "Kubernetes manifests of the Collector"),
    Artefact("systemd", "tokenlat-otelcol.service", "tokenlat_cli.operate.systemd", "hardened systemd unit"),
    Artefact("environment-file", "tokenlat-otelcol.env", "tokenlat_cli.operate.environment_file", "unit env names"),
    Artefact("tlcp-gateway", "tlcp-gateway.conf", "tokenlat_cli.operate.tlcp", "Tengine+Tongsuo TLCP gateway"),
    Artefact("keda", "keda.yaml", "tokenlat_cli.operate.keda", "KEDA ScaledObject on the TTFT quantile or queue"),
    Artefact("hpa", "hpa.yaml", "tokenlat_cli.operate.hpa", "prometheus-adapter rule and HPA (no KEDA)"),
)
ARTEFACTS: dict[str, Artefact] = {a.name: a for a in _ARTEFACTS}


def render_artefact(name: str, profile: Profile) -> str:
    """The text of artefact ``name`` for ``profile``; KeyError for an unknown name."""
    return ARTEFACTS[name].renderer()(profile)
