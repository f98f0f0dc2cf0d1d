"""What each robot shows: one markdown message per send, holding as many queued notifications as fit.

The robots speak three dialects of markdown: DingTalk's (headings, bold, links, ``<font color>``), Feishu's card
markdown (bold, links, ``<font color>``; no headings: the title goes in the card's header) and WeCom's (headings,
bold, links, ``<font color="warning|info|comment">``). Each message is bounded in bytes by what the robot accepts
(WeCom: 4096 bytes of markdown, error 40058 beyond; Feishu: a 20 KB body): a notification that does not fit alone
shows fewer of its alerts, and says how many it left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from tokenlat_cli.relay.alerts import Alert, Notification

#: Labels every alert line shows apart from the rest (or not at all).
_SHOWN_APART = ("alertname", "severity")
#: Other labels shown per alert, at most.
MAX_LABELS_SHOWN = 8
#: Room kept for the header of a message that holds several notifications.
_HEADER_ROOM = 200


@dataclass(frozen=True)
class Dialect:
    name: str
    #: Bytes (UTF-8) the message text may take.
    max_bytes: int
    heading: Callable[[str], str]
    colour: Callable[[str, str], str]  # (text, status) -> text marked red (firing) or green (resolved)

    def size(self, text: str) -> int:
        return len(text.encode())


def _font(firing: str, resolved: str) -> Callable[[str, str], str]:
    return lambda text, status: f'<font color="{firing if status == "firing" else resolved}">{text}</font>'


DINGTALK = Dialect("dingtalk", 18000, lambda s: f"#### {s}", _font("#d93026", "#188038"))
FEISHU = Dialect("feishu", 16000, lambda s: f"**{s}**", _font("red", "green"))
WECOM = Dialect("wecom", 4096, lambda s: f"### {s}", _font("warning", "info"))
DIALECTS = {d.name: d for d in (DINGTALK, FEISHU, WECOM)}


@dataclass(frozen=True)
class Message:
    title: str
    text: str
    status: str  # firing when any notification in it fires
    notifications: tuple[Notification, ...]


def _alert_line(alert: Alert, dialect: Dialect) -> str:
    what = alert.annotations.get("summary") or alert.annotations.get("description") or alert.name
    severity = alert.labels.get("severity")
    labels = [f"{k}={v}" for k, v in alert.labels.items() if k not in _SHOWN_APART][:MAX_LABELS_SHOWN]
    when = f"resolved {alert.ends_at}" if alert.status == "resolved" else f"since {alert.starts_at}"
    parts = [f"- {dialect.colour(alert.status.upper(), alert.status)} **{alert.name}**"]
    if severity:
        parts.append(f"({severity})")
    parts.append(f": {what}")
    line = " ".join(parts)
    if labels:
        line += f"\n  {', '.join(labels)}"
    line += f"\n  {when}"
    if alert.generator_url.startswith(("http://", "https://")):
        line += f" [source]({alert.generator_url})"
    return line


def _section(notification: Notification, dialect: Dialect, alerts_shown: int | None = None) -> str:
    alerts = notification.alerts if alerts_shown is None else notification.alerts[:alerts_shown]
    lines = [dialect.heading(dialect.colour(notification.title, notification.status))]
    summary = notification.common_annotations.get("summary")
    if summary:
        lines.append(summary)
    lines.extend(_alert_line(a, dialect) for a in alerts)
    left_out = len(notification.alerts) - len(alerts) + notification.truncated
    if left_out:
        lines.append(f"- … and {left_out} more alert{'s' if left_out != 1 else ''}")
    if notification.external_url.startswith(("http://", "https://")):
        lines.append(f"[Alertmanager]({notification.external_url})")
    return "\n".join(lines)


def _title(notifications: Sequence[Notification]) -> str:
    if len(notifications) == 1:
        return notifications[0].title
    firing = sum(1 for n in notifications if n.status == "firing")
    return f"{len(notifications)} alert groups: {firing} firing, {len(notifications) - firing} resolved"


def _cut(text: str, dialect: Dialect) -> str:
    """The longest prefix of ``text`` within the dialect's bytes (on a character boundary), marked as cut."""
    mark = "\n…"
    budget = dialect.max_bytes - dialect.size(mark)
    data = text.encode()
    if len(data) <= dialect.max_bytes:
        return text
    return data[:budget].decode("utf-8", errors="ignore") + mark


def compose(queued: Sequence[Notification], dialect: Dialect) -> Message:
    """One message of as many of ``queued`` (in order, at least the first) as fit the dialect's bytes."""
    if not queued:
        raise ValueError("nothing to compose")
    separator = "\n\n---\n\n"
    sections: list[str] = []
    used = _HEADER_ROOM
    for notification in queued:
        section = _section(notification, dialect)
        size = dialect.size(section) + (dialect.size(separator) if sections else 0)
        if used + size > dialect.max_bytes:
            break
        sections.append(section)
        used += size
    if not sections:  # the first alone is too large: show fewer of its alerts, then cut what still does not fit
        first = queued[0]
        shown = len(first.alerts)
        section = _section(first, dialect)
        while shown > 0 and dialect.size(section) + _HEADER_ROOM > dialect.max_bytes:
            shown -= 1
            section = _section(first, dialect, shown)
        sections = [_cut(section, dialect)]
    taken = tuple(queued[: len(sections)])
    title = _title(taken)
    status = "firing" if any(n.status == "firing" for n in taken) else "resolved"
    body = sections[0] if len(sections) == 1 else dialect.heading(title) + separator + separator.join(sections)
    return Message(title=title, text=_cut(body, dialect), status=status, notifications=taken)
