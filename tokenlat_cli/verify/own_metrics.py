"""The services' own metrics in Prometheus text: a Collector's telemetry port, Thanos' /metrics.

The scale-out run judges its faults by what each process says about itself (a gateway's accepted points, an
ingestor's refused samples, the router's answers), read at the moments that bound each fault. Only the text format's
sample lines are read (``name{label="value",...} value``); comments and timestamps are skipped.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import requests

SCRAPE_TIMEOUT = 2.0

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class ScrapeError(RuntimeError):
    """A process whose metrics could not be read; the message names its URL."""


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """The samples of a Prometheus text exposition."""
    samples = []
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        try:
            number = float(value)
        except ValueError:
            continue
        pairs = {k: bytes(v, "utf-8").decode("unicode_escape") for k, v in _LABEL.findall(labels or "")}
        samples.append(Sample(name, pairs, number))
    return samples


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    """The sum of the samples of ``name`` whose labels include ``labels`` (0 when there are none)."""
    found = [s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())]
    return math.fsum(found)


def scrape(url: str, timeout: float = SCRAPE_TIMEOUT) -> list[Sample]:
    """The samples ``url`` serves now; ScrapeError naming it when it does not answer."""
    with requests.Session() as session:
        session.trust_env = False  # this run's local processes, never through a proxy
        try:
            response = session.get(url, timeout=timeout)
            response.raise_for_status()
        except requests.RequestException as exc:
            raise ScrapeError(f"{url}: {exc}") from None
    return parse(response.text)
