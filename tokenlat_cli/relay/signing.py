"""The robots' signatures: HMAC-SHA256, base64, as each robot's documentation spells it.

DingTalk signs ``"{timestamp_ms}\\n{secret}"`` with the secret as the key, and the signature travels URL-encoded
in the query (``timestamp`` and ``sign``). Feishu/Lark uses ``"{timestamp_s}\\n{secret}"`` as the *key* and signs
an empty message; ``timestamp`` and ``sign`` travel in the JSON body. A robot refuses a timestamp more than about an
hour from its own clock, so both are taken when the message is sent, not when it was queued.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from urllib.parse import quote_plus


def _b64_hmac(key: bytes, message: bytes) -> str:
    return base64.b64encode(hmac.new(key, message, hashlib.sha256).digest()).decode("ascii")


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """base64(HMAC-SHA256(key=secret, msg=f"{timestamp_ms}\\n{secret}")), not yet URL-encoded."""
    return _b64_hmac(secret.encode(), f"{timestamp_ms}\n{secret}".encode())


def dingtalk_query(secret: str, timestamp_ms: int) -> str:
    """The query parameters DingTalk checks: ``timestamp=...&sign=...`` with the signature URL-encoded."""
    return f"timestamp={timestamp_ms}&sign={quote_plus(dingtalk_sign(secret, timestamp_ms))}"


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """base64(HMAC-SHA256(key=f"{timestamp_s}\\n{secret}", msg=b"")): Feishu's key is the string to sign."""
    return _b64_hmac(f"{timestamp_s}\n{secret}".encode(), b"")
