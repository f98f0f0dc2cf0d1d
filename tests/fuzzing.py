"""What the fuzz tests (``tests/*/test_fuzz_*.py``) share: their hypothesis settings, and the strategies that make
bad input out of good.

Settings come from one of two profiles, chosen by ``$TOKENLAT_FUZZ_PROFILE`` so that the same tests serve CI and a
long hunt: ``ci`` (the default) runs a few hundred cases a target, short enough for every CI run; ``fuzz``
(``make fuzz``) runs thousands. A target whose cases are slow (a round trip to a sidecar or a Collector) takes a
share of the profile's count. No deadline: the cases' times vary with the machine's load, and a slow case is not a
failure (a hang is: each target bounds its waits itself). The example database lives outside the repository, in
the user's cache, so that a failure ``make fuzz`` found is replayed first by the next run, and nothing lands in
the work tree; the ``ci`` profile keeps none (a CI run starts clean anyway).
"""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from tests.streams import chunk_at

PROFILE_ENV = "TOKENLAT_FUZZ_PROFILE"
_CACHE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tokenlat" / "hypothesis"

settings.register_profile(
    "ci",
    max_examples=300,
    deadline=None,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "fuzz",
    max_examples=5000,
    deadline=None,
    database=DirectoryBasedExampleDatabase(str(_CACHE)),
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = os.environ.get(PROFILE_ENV, "ci")
if PROFILE not in ("ci", "fuzz"):
    raise ValueError(f"${PROFILE_ENV} must be ci or fuzz, got {PROFILE!r}")


def fuzz_settings(share: float = 1.0) -> settings:
    """The active profile's settings, with ``share`` of its examples (a slow target runs fewer)."""
    profile = settings.get_profile(PROFILE)
    return settings(profile, max_examples=max(10, round(profile.max_examples * share)))


# -- strategies -------------------------------------------------------------------------------------------------


@st.composite
def mutated(draw: st.DrawFn, data: bytes, max_edits: int = 4) -> bytes:
    """``data`` with a few random edits: bytes flipped, inserted or deleted, a slice repeated, or cut short. Good
    input nearly right finds what pure noise does not get past the first check for."""
    out = bytearray(data)
    for _ in range(draw(st.integers(1, max_edits), label="edits")):
        at = draw(st.integers(0, len(out)), label="at")
        edit = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "cut"]), label="edit")
        if edit == "flip" and at < len(out):
            out[at] ^= draw(st.integers(1, 255))
        elif edit == "insert":
            out[at:at] = draw(st.binary(min_size=1, max_size=8) | st.sampled_from(INTERESTING))
        elif edit == "delete":
            del out[at : at + draw(st.integers(1, 16))]
        elif edit == "repeat":
            out[at:at] = out[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 4))
        elif edit == "cut":
            del out[at:]
    return bytes(out)


# Bytes that mean something to one parser or another: line ends, separators, numbers at their limits.
INTERESTING = [
    b"\r\n", b"\n", b"\r", b"\r\n\r\n", b"\x00", b":", b" ", b"\t", b",", b";", b"=", b"\"", b"{", b"}", b"[", b"]",
    b"0", b"-1", b"4294967296", b"18446744073709551616", b"\xff", b"\xef\xbb\xbf", "界".encode(),
]  # fmt: skip


def chunked(data: bytes) -> st.SearchStrategy[list[bytes]]:
    """``data`` cut into chunks anywhere, as a network would hand it over (no empty chunks)."""
    cuts = st.lists(st.integers(1, max(1, len(data) - 1)), max_size=12)
    return cuts.map(lambda at: [chunk for chunk in chunk_at(data, at) if chunk])
