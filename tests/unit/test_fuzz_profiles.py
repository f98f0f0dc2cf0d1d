"""Fuzzing the profile loader: whatever a profile file holds, ``load_profile`` returns a Profile or raises its own
``ProfileError`` naming the file (and the field, where there is one), in a message of a line or so.

An operator's typo, a file of the wrong kind, a YAML document built to blow up (aliases of aliases: 400 bytes
whose repr is half a gigabyte) must all end in that one error, which the CLI prints and exits 2 on; any other
exception is a traceback, and a message that grows with the document is a hang. The documents are arbitrary
YAML-ish text, random mappings over the schema's own field names, and the built-in profiles mutated field by
field and byte by byte.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.fuzzing import fuzz_settings, mutated
from tokenlat_cli.profiles import PROFILE_SCHEMA, Profile, ProfileError, builtin_dir, builtin_names, load_profile

# The longest message any of these documents may give: a line or two, whatever the document's size or depth.
MAX_MESSAGE = 1000
FIELD_PATHS = [path for path, _ in PROFILE_SCHEMA.walk()]
FIELD_NAMES = sorted({path.rsplit(".", 1)[-1] for path in FIELD_PATHS})
BUILTINS = {name: (builtin_dir() / f"{name}.yaml").read_bytes() for name in builtin_names()}

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.sampled_from(["", "10s", "0.0.0.0:4317", "http://[::1", "${env:X}", "MY_TOKEN", "geometric:0.01", *BUILTINS])
    | st.text(max_size=12)
)
_VALUES = st.recursive(
    _SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
# Text a YAML parser has to think about: indicators, anchors and aliases, tags, flow and block collections.
_YAMLISH = st.lists(
    st.sampled_from(
        ["\n", "  ", ": ", "- ", "[", "]", "{", "}", ",", "&a ", "*a", "!!binary ", "!!timestamp ", "!!python/name:x",
         "? ", "|", ">", "#", "'", '"', "%YAML 1.1\n", "---\n", "...\n", "2020-13-45", "0x1F", "1e999", ".nan", "~",
         "<<: *a", "\t", "\x00", "\ufeff", "é", *FIELD_NAMES]
    )
    | st.text(max_size=6),
    max_size=40,
).map("".join)  # fmt: skip


@st.composite
def alias_bomb(draw: st.DrawFn) -> str:
    """A field whose value is lists of aliases of lists, ``depth`` times over: tiny text, a huge value."""
    field = draw(st.sampled_from(["extends", "description", "backend:\n  kind", "metrics:\n  attributes"]))
    value = "&a0 [x, x, x, x, x, x, x, x, x, x]"
    for level in range(1, draw(st.integers(1, 9))):
        value = f"&a{level} [{value}" + f", *a{level - 1}" * 9 + "]"
    return f"{field}: {value}\n"


def _set(document: dict[str, Any], path: str, value: Any) -> None:
    """Set (or, for the _DELETE marker, remove) the field at the dotted ``path``, making the mappings above it."""
    *parents, last = path.split(".")
    node = document
    for name in parents:
        child = node.get(name)
        if not isinstance(child, dict):
            child = node[name] = {}
        node = child
    if value is _DELETE:
        node.pop(last, None)
    else:
        node[last] = value


_DELETE = object()


@st.composite
def mutated_builtin(draw: st.DrawFn) -> bytes:
    """A built-in profile with some fields changed, removed or added (through YAML), or its bytes edited."""
    name = draw(st.sampled_from(sorted(BUILTINS)))
    if draw(st.booleans()):
        return draw(mutated(BUILTINS[name], max_edits=6))
    document = yaml.safe_load(BUILTINS[name]) or {}
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(FIELD_PATHS) | st.sampled_from(FIELD_PATHS).map(lambda p: p + ".unknown"))
        _set(document, path, draw(st.just(_DELETE) | _VALUES))
    return yaml.safe_dump(document, allow_unicode=True).encode()


_DOCUMENTS = st.one_of(
    _YAMLISH.map(str.encode),
    st.binary(max_size=200),
    _VALUES.map(lambda value: yaml.safe_dump(value, allow_unicode=True).encode()),
    mutated_builtin(),
    alias_bomb().map(str.encode),
    st.integers(100, 800).map(lambda depth: b"description: " + b"[" * depth + b"]" * depth),
)


def check_loads_or_refuses(path: Path, document: bytes) -> None:
    """``document`` loads, or is refused with a ProfileError of the file, its field and a short reason."""
    path.write_bytes(document)
    try:
        profile = load_profile(str(path))
    except ProfileError as exc:
        message = str(exc)
        assert exc.source == str(path) and message.startswith(f"{path}: "), message
        assert exc.reason and len(message) <= MAX_MESSAGE, message[:MAX_MESSAGE]
        if exc.path:
            assert f": {exc.path}: " in message
    else:
        assert isinstance(profile, Profile) and profile.source == str(path)


@pytest.fixture(scope="module")
def profile_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-profiles") / "p.yaml"


def test_any_document_loads_or_is_refused_with_a_profile_error(profile_path: Path) -> None:
    @fuzz_settings()
    @given(document=_DOCUMENTS)
    def one(document: bytes) -> None:
        check_loads_or_refuses(profile_path, document)

    one()


def test_the_builtin_profiles_mutated_load_or_are_refused(profile_path: Path) -> None:
    @fuzz_settings()
    @given(document=mutated_builtin())
    def one(document: bytes) -> None:
        check_loads_or_refuses(profile_path, document)

    one()


@pytest.mark.parametrize(
    ("document", "where", "reason"),
    [
        (b"description: \xff\n", "byte 14", "not UTF-8 text"),
        (b"description: 2020-13-45\n", "", "invalid YAML: month must be in 1..12"),
        (b"service: {telemetry_port: " + b"1" * 5000 + b"}\n", "", "invalid YAML: Exceeds the limit"),
        (b"description: " + b"[" * 1000 + b"]" * 1000 + b"\n", "", "invalid YAML: nested too deeply"),
        (b"backend: {endpoint: 'http://[::1/'}\n", "backend.endpoint", "is not a URL: Invalid IPv6 URL"),
        (b"description: !!timestamp x\n", "", "invalid YAML: a tagged value that does not fit its tag"),
        (b"description: !!bool x\n", "", "invalid YAML: a tagged value that does not fit its tag"),
    ],
)
def test_what_the_fuzzing_found_is_a_profile_error(
    profile_path: Path, document: bytes, where: str, reason: str
) -> None:
    # Each of these raised something else before (UnicodeDecodeError, ValueError, RecursionError, AttributeError,
    # KeyError).
    profile_path.write_bytes(document)
    with pytest.raises(ProfileError) as refused:
        load_profile(str(profile_path))
    assert refused.value.path == where and refused.value.reason.startswith(reason)


def test_an_alias_bomb_is_refused_with_a_short_message(profile_path: Path) -> None:
    # Nine levels of ten aliases: 500 bytes of YAML, a value whose repr would be 5 GB.
    value = "&a0 [x, x, x, x, x, x, x, x, x, x]"
    for level in range(1, 9):
        value = f"&a{level} [{value}" + f", *a{level - 1}" * 9 + "]"
    for field in ("extends", "backend:\n  kind"):
        profile_path.write_text(f"{field}: {value}\n", encoding="utf-8")
        with pytest.raises(ProfileError, match="got ") as refused:
            load_profile(str(profile_path))
        assert len(str(refused.value)) <= MAX_MESSAGE
