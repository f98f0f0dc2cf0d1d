"""Tests for tokenlat.attributes: the metric attribute allowlist enforced in the library."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from tokenlat import semconv
from tokenlat.attributes import MAX_VALUE_CHARS, AttributePolicy

LOGGER = "tokenlat.test_attributes"


@pytest.fixture
def policy() -> AttributePolicy:
    return AttributePolicy(logger=logging.getLogger(LOGGER))


def test_default_allowlist_is_the_contract() -> None:
    assert AttributePolicy().allowed == frozenset(semconv.METRIC_ATTRIBUTES)
    assert isinstance(AttributePolicy().allowed, frozenset)


def test_keeps_allowed_attributes_unchanged(policy: AttributePolicy) -> None:
    attrs = {
        semconv.GEN_AI_REQUEST_MODEL: "qwen2.5-7b",
        semconv.GEN_AI_OPERATION_NAME: "chat",
        semconv.GPU_TYPE: "H20",
        semconv.USER_TIER: "paid",
    }
    assert policy.filter(attrs) == attrs
    assert policy.dropped == {}


def test_returns_a_new_dict(policy: AttributePolicy) -> None:
    attrs = {semconv.GEN_AI_REQUEST_MODEL: "m"}
    out = policy.filter(attrs)
    out["x"] = 1
    assert attrs == {semconv.GEN_AI_REQUEST_MODEL: "m"}


def test_drops_and_counts_others(policy: AttributePolicy) -> None:
    attrs = {semconv.GEN_AI_REQUEST_MODEL: "m", "http.route": "/v1/chat", "user.id": "u-1"}
    assert policy.filter(attrs) == {semconv.GEN_AI_REQUEST_MODEL: "m"}
    policy.filter({"http.route": "/v1/completions"})
    assert policy.dropped == {"http.route": 2, "user.id": 1}


def test_dropped_is_a_copy(policy: AttributePolicy) -> None:
    policy.filter({"extra": 1})
    snapshot = policy.dropped
    snapshot["extra"] = 999
    assert policy.dropped == {"extra": 1}


def test_custom_allowlist() -> None:
    policy = AttributePolicy(allowed=["a", "b"], logger=logging.getLogger(LOGGER))
    assert policy.allowed == frozenset({"a", "b"})
    assert policy.filter({"a": 1, "b": True, semconv.GEN_AI_REQUEST_MODEL: "m"}) == {"a": 1, "b": True}
    assert policy.dropped == {semconv.GEN_AI_REQUEST_MODEL: 1}


def test_warns_once_per_distinct_key(policy: AttributePolicy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    for _ in range(5):
        policy.filter({"http.route": "/a", "region": "cn-north"})
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 2
    assert all(r.levelno == logging.WARNING for r in records)
    messages = sorted(r.getMessage() for r in records)
    assert "'http.route'" in messages[0]
    assert "'region'" in messages[1]
    assert policy.dropped == {"http.route": 5, "region": 5}


def test_warning_says_how_to_allow(policy: AttributePolicy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    policy.filter({"region": "cn-north"})
    (record,) = caplog.records
    assert "allowlist" in record.getMessage()
    assert "allowed=" in record.getMessage()
    assert "user_id=" not in record.getMessage()  # not id-like: no id hint


def test_never_logs_values(policy: AttributePolicy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    secret_values = {"user.phone": "13800138000", "user.id": "zhangsan@example.com", "prompt": "我的身份证号是..."}
    policy.filter(secret_values)
    assert len(caplog.records) == 3
    for record in caplog.records:
        text = record.getMessage()
        for value in secret_values.values():
            assert value not in text
    assert "13800138000" not in caplog.text
    assert "zhangsan" not in caplog.text


@pytest.mark.parametrize(
    "key", ["user.id", "enduser.id", "gen_ai.request.id", "session.id", "session_id", "userId", "trace_id"]
)
def test_id_like_keys_get_the_span_hint(key: str, policy: AttributePolicy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    policy.filter({key: "x"})
    (record,) = caplog.records
    message = record.getMessage()
    assert repr(key) in message
    assert "user_id=" in message
    assert "request_id=" in message
    assert "span" in message


# is_id_like itself: tests/unit/test_id_like.py, one table for the library, the profile schema and verify.


@pytest.mark.parametrize("bad", ["user.id", "gen_ai.request.id", "session_id", semconv.USER_ID_HASH])
def test_constructor_rejects_id_like_allowlist(bad: str) -> None:
    with pytest.raises(ValueError, match="id-like") as excinfo:
        AttributePolicy(allowed=[*semconv.METRIC_ATTRIBUTES, bad])
    assert bad in str(excinfo.value)


def test_constructor_rejects_single_string() -> None:
    with pytest.raises(TypeError):
        AttributePolicy(allowed="gen_ai.request.model")


def test_default_logger_is_tokenlat(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tokenlat")
    AttributePolicy().filter({"something.else": 1})
    assert [r.name for r in caplog.records] == ["tokenlat"]


@pytest.fixture
def fast_thread_switching() -> Iterator[None]:
    # Switch threads as often as possible so unsynchronised read-modify-write races would show.
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(old)


@pytest.mark.usefixtures("fast_thread_switching")
def test_thread_safety_counts_add_up_and_warn_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger=LOGGER)
    policy = AttributePolicy(logger=logging.getLogger(LOGGER))
    threads_n, iterations = 8, 2000
    barrier = threading.Barrier(threads_n)
    wrong: list[dict[str, object]] = []

    def work(i: int) -> None:
        attrs = {semconv.GEN_AI_REQUEST_MODEL: "m", "extra.a": i, "extra.b": i, f"thread.{i}": i}
        barrier.wait()
        for _ in range(iterations):
            out = policy.filter(attrs)
            if out != {semconv.GEN_AI_REQUEST_MODEL: "m"}:
                wrong.append(out)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert wrong == []
    expected = {"extra.a": threads_n * iterations, "extra.b": threads_n * iterations}
    expected.update({f"thread.{i}": iterations for i in range(threads_n)})
    assert policy.dropped == expected
    warned = sorted(r.args[0] for r in caplog.records if r.name == LOGGER)  # type: ignore[index]
    assert warned == sorted(expected)  # exactly one warning per distinct key, despite the races


def test_long_values_are_cut_and_counted(policy: AttributePolicy, caplog: pytest.LogCaptureFixture) -> None:
    long = "m" * (MAX_VALUE_CHARS + 10)
    kept = policy.filter({semconv.GEN_AI_REQUEST_MODEL: long, semconv.GPU_TYPE: "H20", semconv.USER_TIER: 7})
    assert kept == {semconv.GEN_AI_REQUEST_MODEL: long[:MAX_VALUE_CHARS], semconv.GPU_TYPE: "H20", semconv.USER_TIER: 7}
    assert policy.filter({semconv.GEN_AI_REQUEST_MODEL: "m" * MAX_VALUE_CHARS}) == {
        semconv.GEN_AI_REQUEST_MODEL: "m" * MAX_VALUE_CHARS
    }
    assert policy.truncated == 1
    assert long not in caplog.text


def test_the_value_limit_is_settable_and_checked() -> None:
    assert AttributePolicy(max_value_chars=3).filter({semconv.GPU_TYPE: "H20-96G"}) == {semconv.GPU_TYPE: "H20"}
    with pytest.raises(ValueError, match="max_value_chars"):
        AttributePolicy(max_value_chars=0)
