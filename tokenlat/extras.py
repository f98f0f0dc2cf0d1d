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


class MissingExtra(ImportError):
    """An optional part of tokenlat was used without its extra installed; the message says what to install."""


def missing(extra: str) -> list[str]:
    """The modules of ``extra`` that cannot be imported here."""
    return [name for name in EXTRAS[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, feature: str) -> None:
    """Raise MissingExtra, naming ``feature`` and the pip command, unless every module of ``extra`` is present."""
    absent = missing(extra)
    if absent:
        raise MissingExtra(
            f"{feature} needs the tokenlat[{extra}] extra ({', '.join(absent)} not installed): "
            f"pip install 'tokenlat[{extra}]'"
        )
