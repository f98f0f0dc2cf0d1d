"""Known-answer and behaviour tests for tokenlat.privacy (keyed hashing of user ids)."""

from __future__ import annotations

import hashlib
import hmac
import threading

import pytest
from cryptography.hazmat.primitives import hashes

from tokenlat.privacy import ALGORITHM_ENV, ALGORITHMS, KEY_ENV, UserIdHasher, hmac_digest

# --- HMAC-SHA256: RFC 4231 section 4 ------------------------------------------------------
# (key hex, data hex, HMAC-SHA-256 hex), test cases 1, 2, 3, 4, 6 and 7 of RFC 4231.
# Case 5 is omitted: it checks a truncated output, which this module never produces.
RFC4231 = [
    pytest.param(
        "0b" * 20,
        "4869205468657265",  # "Hi There"
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7",
        id="rfc4231-case1",
    ),
    pytest.param(
        "4a656665",  # "Jefe"
        "7768617420646f2079612077616e7420666f72206e6f7468696e673f",  # "what do ya want for nothing?"
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
        id="rfc4231-case2",
    ),
    pytest.param(
        "aa" * 20,
        "dd" * 50,
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe",
        id="rfc4231-case3",
    ),
    pytest.param(
        "0102030405060708090a0b0c0d0e0f10111213141516171819",
        "cd" * 50,
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b",
        id="rfc4231-case4",
    ),
    pytest.param(
        "aa" * 131,  # key longer than the 64-byte block: hashed first
        b"Test Using Larger Than Block-Size Key - Hash Key First".hex(),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54",
        id="rfc4231-case6",
    ),
    pytest.param(
        "aa" * 131,
        b"This is a test using a larger than block-size key and a larger than block-size data. "
        b"The key needs to be hashed before being used by the HMAC algorithm.".hex(),
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2",
        id="rfc4231-case7",
    ),
]


@pytest.mark.parametrize(("key_hex", "data_hex", "expected"), RFC4231)
def test_hmac_sha256_rfc4231(key_hex: str, data_hex: str, expected: str) -> None:
    assert hmac_digest(bytes.fromhex(key_hex), bytes.fromhex(data_hex), "sha256").hex() == expected


# UserIdHasher takes a str: cases 3 and 4 have binary data (0xdd, 0xcd), the rest ASCII text.
TEXT_RFC4231 = [v for v in RFC4231 if v.id not in ("rfc4231-case3", "rfc4231-case4")]


@pytest.mark.parametrize(("key_hex", "data_hex", "expected"), TEXT_RFC4231)
def test_user_id_hasher_sha256_rfc4231(key_hex: str, data_hex: str, expected: str) -> None:
    hasher = UserIdHasher(bytes.fromhex(key_hex))
    assert hasher.algorithm == "sha256"
    assert hasher(bytes.fromhex(data_hex).decode("ascii")) == expected


# --- SM3 and HMAC-SM3 ---------------------------------------------------------------------


def test_plain_sm3_standard_vector() -> None:
    # GB/T 32905-2016 (GM/T 0004-2012) Appendix A.1: SM3("abc"), also in draft-shen-sm3-hash-01.
    # Anchors the SM3 primitive that both the module and the reference HMAC below are built on.
    digest = hashes.Hash(hashes.SM3())
    digest.update(b"abc")
    assert digest.finalize().hex() == "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"


# (key, message, HMAC-SM3 hex). Sources:
# - "gmt0042-*": GM/T 0042-2015 Appendix D.3, as reproduced in OpenSSL's
#   test/recipes/30-test_evp_data/evpmac_sm3.txt and libxcrypt's test/alg-sm3-hmac.c
#   (the first three agree in both; the second is also in intel-ipsec-mb test/kat-app/hmac_sm3.json.c).
# - "openssl-jefe-long-key": OpenSSL evpmac_sm3.txt, 4th vector.
# - "libxcrypt-jefe": libxcrypt test/alg-sm3-hmac.c, 4th vector.
# - "libxcrypt-128-byte-key": libxcrypt test/alg-sm3-hmac.c, custom vector with a key > block size.
HMAC_SM3_VECTORS = [
    pytest.param(
        bytes(range(1, 33)),
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq" * 2,
        "ca05e144ed05d1857840d1f318a4a8669e559fc8391f414485bfdf7bb408963a",
        id="gmt0042-1",
    ),
    pytest.param(
        bytes(range(1, 38)),
        b"\xcd" * 50,
        "220bf579ded555393f0159f66c99877822a3ecf610d1552154b41d44b94db3ae",
        id="gmt0042-2",
    ),
    pytest.param(
        b"\x0b" * 32,
        b"Hi There",
        "c0ba18c68b90c88bc07de794bfc7d2c8d19ec31ed8773bc2b390c9604e0be11e",
        id="gmt0042-3",
    ),
    pytest.param(
        b"Jefe Jeferson Jr",
        b"what do ya want for nothing?",
        "ce791a34c59adef472997a249600f3f244d59e875be04055ba2ae12fc845e78c",
        id="openssl-jefe-long-key",
    ),
    pytest.param(
        b"Jefe",
        b"what do ya want for nothing?",
        "2e87f1d16862e6d964b50a5200bf2b10b764faa9680a296a2405f24bec39f882",
        id="libxcrypt-jefe",
    ),
    pytest.param(
        b"It's complicated to explain, but we need some text that clearly exceeds sixtyfour bytes"
        b" of data for the key to test coverage....",
        b"What is the purpose of this test???",
        "d3dec863e316596238090eace661e6d3c4cbae43dcf0060c71f0e4e5dc5ff7d3",
        id="libxcrypt-128-byte-key",
    ),
]


@pytest.mark.parametrize(("key", "message", "expected"), HMAC_SM3_VECTORS)
def test_hmac_sm3_published_vectors(key: bytes, message: bytes, expected: str) -> None:
    assert hmac_digest(key, message, "sm3").hex() == expected


# UserIdHasher takes a str: every vector except gmt0042-2 (bytes 0xcd, not UTF-8) has one.
TEXT_SM3_VECTORS = [v for v in HMAC_SM3_VECTORS if v.id != "gmt0042-2"]


@pytest.mark.parametrize(("key", "message", "expected"), TEXT_SM3_VECTORS)
def test_user_id_hasher_sm3_published_vectors(key: bytes, message: bytes, expected: str) -> None:
    assert UserIdHasher(key, "sm3")(message.decode("ascii")) == expected


def _sm3(data: bytes) -> bytes:
    digest = hashes.Hash(hashes.SM3())
    digest.update(data)
    return digest.finalize()


def reference_hmac_sm3(key: bytes, message: bytes) -> bytes:
    """HMAC per RFC 2104 from the plain SM3 hash: independent of both OpenSSL's HMAC and the module."""
    block = 64  # SM3 block size in bytes
    if len(key) > block:
        key = _sm3(key)
    key = key.ljust(block, b"\x00")
    inner = bytes(b ^ 0x36 for b in key)
    outer = bytes(b ^ 0x5C for b in key)
    return _sm3(outer + _sm3(inner + message))


CROSS_KEYS = [b"k", b"secret key", bytes(range(64)), bytes(range(63)), bytes(range(65)), b"\xa5" * 200]
CROSS_MESSAGES = ["", "user-42", "13800138000", "用户-张三", "x" * 64, "y" * 1000]


@pytest.mark.parametrize("key", CROSS_KEYS, ids=lambda k: f"key{len(k)}")
def test_hmac_sm3_matches_rfc2104_reference(key: bytes) -> None:
    hasher = UserIdHasher(key, "sm3")
    for message in CROSS_MESSAGES:
        expected = reference_hmac_sm3(key, message.encode("utf-8"))
        assert hmac_digest(key, message.encode("utf-8"), "sm3") == expected
        assert hasher(message) == expected.hex()


def test_reference_hmac_construction_matches_stdlib_for_sha256() -> None:
    # Guards the reference itself: the same RFC 2104 construction over SHA-256 must equal the
    # stdlib HMAC, otherwise a bug in reference_hmac_sm3 could hide a bug in the module.
    def ref(key: bytes, message: bytes) -> bytes:
        if len(key) > 64:
            key = hashlib.sha256(key).digest()
        key = key.ljust(64, b"\x00")
        inner = hashlib.sha256(bytes(b ^ 0x36 for b in key) + message).digest()
        return hashlib.sha256(bytes(b ^ 0x5C for b in key) + inner).digest()

    for key in CROSS_KEYS:
        assert ref(key, b"msg") == hmac.digest(key, b"msg", "sha256")


# --- UserIdHasher behaviour ---------------------------------------------------------------


def test_hasher_output_is_lowercase_hex_of_utf8() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    for algorithm in ALGORITHMS:
        out = UserIdHasher(key, algorithm)("张三")
        assert len(out) == 64
        assert out == out.lower()
        assert out == hmac_digest(key, "张三".encode(), algorithm).hex()


def test_hasher_is_deterministic_and_keyed() -> None:
    a, b = UserIdHasher(b"key-a"), UserIdHasher(b"key-b")
    assert a("alice") == a("alice")
    assert a("alice") != a("bob")
    assert a("alice") != b("alice")
    assert a("alice") != hashlib.sha256(b"alice").hexdigest()  # keyed, not a bare hash


def test_algorithms_give_different_results() -> None:
    assert UserIdHasher(b"k", "sha256")("u") != UserIdHasher(b"k", "sm3")("u")


def test_algorithm_name_is_case_insensitive() -> None:
    assert UserIdHasher(b"k", "SM3").algorithm == "sm3"


def test_empty_key_rejected() -> None:
    with pytest.raises(ValueError, match="empty"):
        UserIdHasher(b"")


def test_str_key_rejected() -> None:
    with pytest.raises(TypeError, match="bytes"):
        UserIdHasher("not-bytes")  # type: ignore[arg-type]


def test_unknown_algorithm_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="md5") as excinfo:
        UserIdHasher(b"k", "md5")
    for name in ALGORITHMS:
        assert name in str(excinfo.value)


def test_hmac_digest_rejects_unknown_algorithm() -> None:
    with pytest.raises(ValueError, match="sha256, sm3"):
        hmac_digest(b"k", b"m", "sha1")


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_repr_and_str_hide_the_key(algorithm: str) -> None:
    key = b"super-secret-key-value-1234"
    hasher = UserIdHasher(key, algorithm)
    for text in (repr(hasher), str(hasher)):
        assert algorithm in text
        assert key.decode() not in text
        assert key.hex() not in text
        assert "super-secret" not in text
    assert not hasattr(hasher, "__dict__")  # no stray attribute where a key could hide


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_hasher_is_thread_safe(algorithm: str) -> None:
    # The pre-keyed base object is shared; each call works on its own copy.
    hasher = UserIdHasher(b"shared key", algorithm)
    expected = {f"user-{i}": hmac_digest(b"shared key", f"user-{i}".encode(), algorithm).hex() for i in range(50)}
    errors: list[str] = []
    barrier = threading.Barrier(8)

    def work() -> None:
        barrier.wait()
        for _ in range(20):
            for uid, want in expected.items():
                if hasher(uid) != want:
                    errors.append(uid)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# --- from_env -----------------------------------------------------------------------------


def test_from_env_unset_or_empty_key_is_none() -> None:
    assert UserIdHasher.from_env({}) is None
    assert UserIdHasher.from_env({KEY_ENV: ""}) is None
    assert UserIdHasher.from_env({KEY_ENV: "", ALGORITHM_ENV: "sm3"}) is None


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, "from-os-environ")
    monkeypatch.delenv(ALGORITHM_ENV, raising=False)
    hasher = UserIdHasher.from_env()
    assert hasher is not None
    assert hasher("u") == hmac_digest(b"from-os-environ", b"u", "sha256").hex()
    monkeypatch.delenv(KEY_ENV)
    assert UserIdHasher.from_env() is None


def test_from_env_utf8_key_and_default_algorithm() -> None:
    hasher = UserIdHasher.from_env({KEY_ENV: "密钥-key"})
    assert hasher is not None
    assert hasher.algorithm == "sha256"
    assert hasher("u") == hmac_digest("密钥-key".encode(), b"u", "sha256").hex()


def test_from_env_hex_key_and_sm3() -> None:
    env = {KEY_ENV: "hex:0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b", ALGORITHM_ENV: "sm3"}
    hasher = UserIdHasher.from_env(env)
    assert hasher is not None
    assert hasher.algorithm == "sm3"
    # GM/T 0042-2015 Appendix D.3 third vector: the hex key was decoded, not used as text.
    assert hasher("Hi There") == "c0ba18c68b90c88bc07de794bfc7d2c8d19ec31ed8773bc2b390c9604e0be11e"


def test_from_env_hex_key_sha256_rfc4231_case1() -> None:
    hasher = UserIdHasher.from_env({KEY_ENV: "hex:" + "0b" * 20, ALGORITHM_ENV: "sha256"})
    assert hasher is not None
    assert hasher("Hi There") == "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"


def test_from_env_empty_algorithm_means_default() -> None:
    hasher = UserIdHasher.from_env({KEY_ENV: "k", ALGORITHM_ENV: ""})
    assert hasher is not None
    assert hasher.algorithm == "sha256"


def test_from_env_bad_algorithm_names_variable_not_key() -> None:
    key = "do-not-leak-this-key"
    with pytest.raises(ValueError) as excinfo:
        UserIdHasher.from_env({KEY_ENV: key, ALGORITHM_ENV: "md5"})
    message = str(excinfo.value)
    assert message == "TOKENLAT_USER_ID_HASH: must be one of sha256, sm3, got 'md5'"
    assert key not in message


@pytest.mark.parametrize("raw", ["hex:zz-do-not-leak", "hex:abc", "hex:0g0g0g0g"])
def test_from_env_bad_hex_names_variable_not_key(raw: str) -> None:
    with pytest.raises(ValueError) as excinfo:
        UserIdHasher.from_env({KEY_ENV: raw})
    message = str(excinfo.value)
    assert message.startswith(f"{KEY_ENV}:")
    assert raw[len("hex:") :] not in message
    assert "do-not-leak" not in message
    # No chained exception carries a fragment of the key into a traceback.
    assert excinfo.value.__cause__ is None
    assert excinfo.value.__suppress_context__


def test_from_env_hex_prefix_without_bytes_is_an_error() -> None:
    with pytest.raises(ValueError, match=KEY_ENV):
        UserIdHasher.from_env({KEY_ENV: "hex:"})
