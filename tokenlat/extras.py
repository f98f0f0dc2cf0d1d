"""The optional parts of tokenlat and the packages each needs: one line naming the extra, not a traceback.

``pip install tokenlat`` installs what a service needs to record (the OpenTelemetry SDK and the OTLP exporter).
The rest comes with extras: ``[sidecar]`` (measuring from outside), ``[cli]`` (render and verify), ``[sm3]``
(HMAC-SM3 user-id hashing), ``[all]``. Code that needs an extra calls ``require`` before importing it.
"""

from __future__ import annotations

import importlib.util

#: extra -> the top-level modules it installs that tokenlat imports (pyproject.toml lists the distributions).
EXTRAS: dict[str, tuple[str, ...]] = {
    "sidecar": ("httptools", "yarl", "click"),
    "cli": ("click", "jinja2", "yaml", "requests", "aiohttp", "bcrypt", "cryptography", "httptools", "yarl"),
    "sm3": ("cryptography",),
}

#: Modules of an extra that one part of it alone needs: extra -> part -> modules. Only that part checks them
#: (``require(extra, feature, part=...)``), so without them the rest of the extra still works. The dashboard SDK
#: (grafana-foundation-sdk, Python 3.11+) comes with [cli] but only `render --what dashboard` imports it.
PARTS: dict[str, dict[str, tuple[str, ...]]] = {
    "cli": {"dashboard": ("grafana_foundation_sdk",)},
}


class MissingExtra(ImportError):
    """An optional part of tokenlat was used without its extra installed; the message says what to install."""


def missing(extra: str, part: str | None = None) -> list[str]:
    """The modules of ``extra`` (or of its ``part``, PARTS) that cannot be imported here."""
    names = EXTRAS[extra] if part is None else PARTS[extra][part]
    return [name for name in names if importlib.util.find_spec(name) is None]


def require(extra: str, feature: str, part: str | None = None) -> None:
    """Raise MissingExtra, naming ``feature`` and the pip command, unless every module of ``extra`` (or of its
    ``part``) is present."""
    absent = missing(extra, part)
    if absent:
        raise MissingExtra(
            f"{feature} needs the tokenlat[{extra}] extra ({', '.join(absent)} not installed): "
            f"pip install 'tokenlat[{extra}]'"
        )
