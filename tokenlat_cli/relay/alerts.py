"""Alertmanager's webhook payload (version 4), read defensively: everything in it is bounded.

The relay listens on the network, so a payload is untrusted until read: at most ``MAX_ALERTS`` alerts (the rest are
counted as truncated, as Alertmanager's own ``max_alerts`` does), ``MAX_LABELS`` labels and annotations each,
strings cut to ``MAX_TEXT`` characters with control characters removed (they would break the robots' markdown).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

#: Request bodies larger than this are refused (HTTP 413) before they are parsed.
MAX_BODY_BYTES = 1 << 20
#: Alerts read from one notification; Alertmanager's webhook ``max_alerts`` is rendered at the same value.
MAX_ALERTS = 50
MAX_LABELS = 64
MAX_TEXT = 1024
#: Characters kept of a label name, and of the group key.
MAX_NAME = 128

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class InvalidPayload(ValueError):
    """Not an Alertmanager webhook payload of version 4; the message says what is wrong (never echoes it whole)."""


def clean(value: Any, limit: int = MAX_TEXT) -> str:
    """A string from the payload: control characters (but newlines and tabs) removed, at most ``limit`` chars."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    text = _CONTROL.sub("", text[: limit * 2])
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _mapping(value: Any, where: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidPayload(f"{where} must be an object")
    return {clean(k, MAX_NAME): clean(v) for k, v in list(value.items())[:MAX_LABELS]}


@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    ends_at: str
    generator_url: str
    fingerprint: str

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")


@dataclass(frozen=True)
class Notification:
    """One message of Alertmanager about one alert group: the group's state as of now."""

    status: str  # firing or resolved (the group's: firing while any of its alerts fires)
    receiver: str
    group_key: str
    group_labels: dict[str, str]
    common_labels: dict[str, str]
    common_annotations: dict[str, str]
    external_url: str
    alerts: tuple[Alert, ...]
    truncated: int = 0  # alerts left out (by Alertmanager's max_alerts, or here)
    attempts: int = field(default=0, compare=False)  # sends tried so far (the outbox counts)

    @property
    def title(self) -> str:
        name = self.group_labels.get("alertname") or self.common_labels.get("alertname") or "alerts"
        firing = sum(1 for a in self.alerts if a.status == "firing")
        return f"[{self.status.upper()}{f':{firing}' if self.status == 'firing' else ''}] {name}"

    @property
    def severity(self) -> str:
        return self.common_labels.get("severity", "")


def _alert(raw: Any, index: int) -> Alert:
    where = f"alerts[{index}]"
    if not isinstance(raw, dict):
        raise InvalidPayload(f"{where} must be an object")
    status = raw.get("status")
    if status not in ("firing", "resolved"):
        raise InvalidPayload(f"{where}.status must be firing or resolved")
    return Alert(
        status=status,
        labels=_mapping(raw.get("labels"), f"{where}.labels"),
        annotations=_mapping(raw.get("annotations"), f"{where}.annotations"),
        starts_at=clean(raw.get("startsAt"), 64),
        ends_at=clean(raw.get("endsAt"), 64),
        generator_url=clean(raw.get("generatorURL")),
        fingerprint=clean(raw.get("fingerprint"), 64),
    )


def parse_notification(body: bytes) -> Notification:
    """The notification in ``body`` (JSON of Alertmanager's webhook, version 4), bounded; InvalidPayload if not."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise InvalidPayload(f"not JSON: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise InvalidPayload("must be a JSON object")
    if data.get("version") != "4":
        raise InvalidPayload(f'version must be "4", got {clean(data.get("version"), 16)!r}')
    status = data.get("status")
    if status not in ("firing", "resolved"):
        raise InvalidPayload("status must be firing or resolved")
    raw_alerts = data.get("alerts")
    if not isinstance(raw_alerts, list) or not raw_alerts:
        raise InvalidPayload("alerts must be a non-empty list")
    truncated = data.get("truncatedAlerts", 0)
    truncated = truncated if isinstance(truncated, int) and truncated >= 0 else 0
    return Notification(
        status=status,
        receiver=clean(data.get("receiver"), MAX_NAME),
        group_key=clean(data.get("groupKey"), MAX_TEXT),
        group_labels=_mapping(data.get("groupLabels"), "groupLabels"),
        common_labels=_mapping(data.get("commonLabels"), "commonLabels"),
        common_annotations=_mapping(data.get("commonAnnotations"), "commonAnnotations"),
        external_url=clean(data.get("externalURL")),
        alerts=tuple(_alert(raw, i) for i, raw in enumerate(raw_alerts[:MAX_ALERTS])),
        truncated=truncated + max(0, len(raw_alerts) - MAX_ALERTS),
    )
