"""Keyed hashing of user ids, so a span can say "same user" without saying "which user".

De-identification under China's PIPL (and pseudonymisation under the GDPR) is about what a
reader of the telemetry can learn. A *keyed* hash (HMAC) of a user id is pseudonymisation,
not anonymisation: whoever holds the key can recompute the hash of any candidate id and so
re-link it, which is why the hash is still personal information for as long as the key
exists. Destroying (or rotating away) the key is what finally cuts the link.

Why keyed at all: user ids come from small, structured spaces -- a mainland phone number has
about 10^9 plausible values, an account number often fewer. An unkeyed SHA-256 or SM3 of such
an id is reversed by simply hashing every candidate, in minutes on one GPU. With an HMAC the
attacker also needs the key, which never leaves the process that hashes.

The key comes from the environment (``TOKENLAT_USER_ID_KEY``), never from code or config
files, and is never logged, put in an exception message, or shown in a ``repr``. Without a
key, :meth:`UserIdHasher.from_env` returns None and the caller drops user ids entirely --
hashing without a key would only *look* private.

Two algorithms: HMAC-SHA256 (the default) and HMAC-SM3 (GB/T 32905-2016, the Chinese national
hash standard, often required by domestic compliance reviews). Both give 64 hex characters.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from tokenlat.extras import require

if TYPE_CHECKING:
    from cryptography.hazmat.primitives import hmac as crypto_hmac

KEY_ENV = "TOKENLAT_USER_ID_KEY"
ALGORITHM_ENV = "TOKENLAT_USER_ID_HASH"
ALGORITHMS: tuple[str, ...] = ("sha256", "sm3")

_HEX_PREFIX = "hex:"


def _check_algorithm(algorithm: str) -> str:
    name = algorithm.strip().lower() if isinstance(algorithm, str) else algorithm
    if name not in ALGORITHMS:
        raise ValueError(f"unknown user id hash algorithm {algorithm!r}: must be one of {', '.join(ALGORITHMS)}")
    return name


def _sm3_hmac(key: bytes) -> crypto_hmac.HMAC:
    # hashlib has no SM3 (OpenSSL's is not exposed); cryptography's is, so it is needed only when SM3 is chosen.
    require("sm3", "HMAC-SM3 user-id hashing")
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives import hmac as crypto_hmac

    try:
        return crypto_hmac.HMAC(key, hashes.SM3())
    except UnsupportedAlgorithm as exc:
        # Some OpenSSL builds (FIPS mode, trimmed distributions) leave SM3 out.
        raise ValueError("sm3 is not available in this build of cryptography/OpenSSL") from exc


def _keyed(key: bytes, algorithm: str) -> Callable[[bytes], bytes]:
    """A function message -> HMAC(key, message), with the key schedule computed once.

    HMAC hashes the padded key into the inner and outer states before any message is seen;
    copying a pre-keyed object skips that work (two compression-function calls) on every call.
    """
    if algorithm == "sha256":
        base = hmac.new(key, digestmod=hashlib.sha256)

        def digest(message: bytes) -> bytes:
            mac = base.copy()
            mac.update(message)
            return mac.digest()

        return digest

    base_sm3 = _sm3_hmac(key)

    def digest_sm3(message: bytes) -> bytes:
        mac = base_sm3.copy()
        mac.update(message)
        return mac.finalize()

    return digest_sm3


def hmac_digest(key: bytes, message: bytes, algorithm: str) -> bytes:
    """One-shot HMAC of ``message`` under ``key`` with ``algorithm`` ("sha256" or "sm3").

    The primitive :class:`UserIdHasher` uses; exposed so the tests can run published
    known-answer vectors against exactly this code path.
    """
    algorithm = _check_algorithm(algorithm)
    if algorithm == "sha256":
        return hmac.digest(key, message, "sha256")
    mac = _sm3_hmac(key)
    mac.update(message)
    return mac.finalize()


class UserIdHasher:
    """Maps a user id to the lowercase hex HMAC of its UTF-8 bytes under a secret key.

    The key itself is not kept as an attribute -- only the pre-keyed HMAC state -- and
    ``repr``/``str`` show the algorithm alone, so a hasher that ends up in a log line or a
    traceback's locals does not leak the key.
    """

    __slots__ = ("_algorithm", "_digest")

    def __init__(self, key: bytes, algorithm: str = "sha256") -> None:
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"key must be bytes, not {type(key).__name__}")
        if len(key) == 0:
            raise ValueError("user id hash key must not be empty (an HMAC with no key is just a reversible hash)")
        self._algorithm = _check_algorithm(algorithm)
        self._digest = _keyed(bytes(key), self._algorithm)

    @property
    def algorithm(self) -> str:
        """The HMAC's hash function: "sha256" or "sm3"."""
        return self._algorithm

    def __call__(self, user_id: str) -> str:
        return self._digest(user_id.encode("utf-8")).hex()

    def __repr__(self) -> str:
        return f"UserIdHasher(algorithm={self._algorithm!r})"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> UserIdHasher | None:
        """Build a hasher from ``TOKENLAT_USER_ID_KEY`` / ``TOKENLAT_USER_ID_HASH``, or None without a key.

        The key is taken as its UTF-8 bytes, or, with a ``hex:`` prefix, as the hex-decoded
        rest (for random binary keys, e.g. ``hex:$(openssl rand -hex 32)``). Errors name the
        variable but never echo the key, and do not chain the decoding exception, so no part
        of it reaches a log.
        """
        env = os.environ if environ is None else environ
        raw_algorithm = env.get(ALGORITHM_ENV, "") or "sha256"
        algorithm = raw_algorithm.strip().lower()
        if algorithm not in ALGORITHMS:
            raise ValueError(f"{ALGORITHM_ENV}: must be one of {', '.join(ALGORITHMS)}, got {raw_algorithm!r}")

        raw_key = env.get(KEY_ENV, "")
        if not raw_key:
            return None
        if raw_key.startswith(_HEX_PREFIX):
            try:
                key = bytes.fromhex(raw_key[len(_HEX_PREFIX) :])
            except ValueError:
                raise ValueError(
                    f"{KEY_ENV}: the part after 'hex:' is not valid hex (an even number of 0-9a-f digits)"
                ) from None
            if not key:
                raise ValueError(f"{KEY_ENV}: 'hex:' is followed by no key bytes")
        else:
            key = raw_key.encode("utf-8")
        return cls(key, algorithm)
