"""The metric attribute allowlist, enforced in the library rather than hoped for downstream.

Every metric attribute becomes a Prometheus label, and every distinct label value a new time
series. One request id or user id as a label turns four histograms into millions of series
(the classic cardinality explosion) and copies personal data into a store that keeps it for
months with no way to delete one person. So only keys from :data:`semconv.METRIC_ATTRIBUTES`
(or an explicit, reviewed allowlist) reach a metric; everything else is dropped here, counted,
and reported once. Ids belong on the span: pass them as ``user_id=`` (hashed, see
:mod:`tokenlat.privacy`) or ``request_id=``.

Only attribute *keys* are ever logged. Values may be personal data (a phone number passed as
``user.phone``), so they never reach a log line.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Iterable, Mapping

from opentelemetry.util.types import AttributeValue

from tokenlat import semconv

# The one definition of an id-like key, used by the library's allowlist, the profile schema (tokenlat_cli.profiles)
# and verify's label check, so that what one refuses the others refuse too. An id of a request, of a part of one
# (response, trace, span, message, ...) or of a person (user, account, customer ...): unbounded, one series per
# request or per person, and personal information. A hashed id is still an id: as unbounded as the original, and
# still personal. Ids of bounded things are not refused: a model, a provider, a tenant (``tenant_id``, Thanos' own
# label) or a piece of content (``video_id``) has as many values as there are of those things, which the allowlist
# review judges; only the id kinds below are refused outright.
ID_KINDS = (
    "request",
    "req",
    "response",
    "trace",
    "span",
    "session",
    "conversation",
    "thread",
    "message",
    "user",
    "enduser",
    "account",
    "customer",
)
# One of the kinds, then "id", optionally "_hash", ending the key, in words separated by dots (attribute keys),
# underscores (Prometheus label names, where the dots became underscores) or hyphens: "user.id", "enduser_id",
# "gen_ai.request.id", "session-id", "tokenlat_user_id_hash". Case-insensitive: "UserID", "requestid".
ID_LIKE_KEY = re.compile(rf"(^|[._-])({'|'.join(ID_KINDS)})[._-]?id([._-]hash)?$", re.IGNORECASE)
# camelCase humps become word boundaries first ("endUserId" -> "end_User_Id", "HTTPRequestId" -> "HTTP_Request_Id").
# The value an attribute is recorded with when its real value is not admitted (the sidecar's model names beyond its
# allowlist or cap; in the Collector, values outside a profile's metrics.values): one bounded series instead of many.
OTHER_VALUE = "_other"
# Attribute values are cut to this many characters: a value is a label, not a payload, and nothing bounds what an
# integration passes through (Prometheus keeps every label value in its index, whole).
MAX_VALUE_CHARS = 256

_CAMEL_HUMP = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def is_id_like(key: str) -> bool:
    """True if ``key`` (an attribute key or a Prometheus label name) looks like the id of a request or a person, and
    so must never be a metric label."""
    return ID_LIKE_KEY.search(_CAMEL_HUMP.sub("_", key)) is not None


class AttributePolicy:
    """Keeps the allowed metric attributes, drops and counts the rest, warns once per dropped key.

    Thread-safe. The common path -- nothing dropped -- is one dict comprehension and takes no
    lock; the lock guards only the drop counters and the warn-once set.
    """

    def __init__(
        self,
        allowed: Iterable[str] = semconv.METRIC_ATTRIBUTES,
        logger: logging.Logger | None = None,
        max_value_chars: int = MAX_VALUE_CHARS,
    ) -> None:
        if max_value_chars < 1:
            raise ValueError(f"max_value_chars must be at least 1, got {max_value_chars}")
        if isinstance(allowed, str):
            # A lone string would silently become an allowlist of its characters.
            raise TypeError("allowed must be an iterable of attribute keys, not a single str")
        keys = frozenset(allowed)
        id_like = sorted(key for key in keys if is_id_like(key))
        if id_like:
            raise ValueError(
                f"metric attribute allowlist contains id-like keys {id_like}: ids of requests or people must never"
                " become metric labels (unbounded cardinality, personal data); pass them as user_id=/request_id="
                " so they go on the span instead"
            )
        self._allowed = keys
        self._logger = logger if logger is not None else logging.getLogger("tokenlat")
        self._lock = threading.Lock()
        self._dropped: dict[str, int] = {}
        self._max_value_chars = max_value_chars
        self._truncated = 0

    @property
    def allowed(self) -> frozenset[str]:
        """The keys that may become metric attributes."""
        return self._allowed

    @property
    def dropped(self) -> dict[str, int]:
        """A snapshot copy of key -> number of times it was dropped."""
        with self._lock:
            return dict(self._dropped)

    @property
    def truncated(self) -> int:
        """How many attribute values were cut to ``max_value_chars``."""
        return self._truncated

    def filter(self, attributes: Mapping[str, AttributeValue]) -> dict[str, AttributeValue]:
        """Return only the allowed attributes, string values cut to ``max_value_chars``; count (and, the first
        time, log) every dropped key, count every cut value."""
        allowed = self._allowed
        kept = {key: value for key, value in attributes.items() if key in allowed}
        if len(kept) != len(attributes):
            self._record_drops([key for key in attributes if key not in allowed])
        limit = self._max_value_chars
        for key, value in kept.items():
            if isinstance(value, str) and len(value) > limit:
                kept[key] = value[:limit]
                with self._lock:
                    self._truncated += 1
        return kept

    def _record_drops(self, keys: list[str]) -> None:
        first_seen: list[str] = []
        with self._lock:
            for key in keys:
                count = self._dropped.get(key, 0)
                if count == 0:
                    first_seen.append(key)
                self._dropped[key] = count + 1
        # Log outside the lock: a slow handler must not stall other requests' filtering.
        for key in first_seen:
            self._warn(key)

    def _warn(self, key: str) -> None:
        if is_id_like(key):
            advice = (
                "it looks like an identifier: pass it as user_id= or request_id= instead, so it is put on the"
                " span (user ids hashed) and never becomes a metric label"
            )
        else:
            advice = (
                "to keep it, add it to the allowlist (AttributePolicy(allowed=...) and the Collector profile),"
                " but only if it has a small, bounded set of values"
            )
        # Only the key: values may be personal data and are never logged.
        self._logger.warning(
            "tokenlat dropped metric attribute %r (not in the allowlist; further drops are counted, not logged): %s",
            key,
            advice,
        )
