"""One table of id-like and ordinary attribute keys, put to every user of the rule: the library's allowlist, the
profile schema and verify's label check. The three once held copies of the rule that disagreed (a profile could
allowlist ``tokenlat.user.id_hash``, which the library refuses); one table against all three keeps them agreeing.

``video_id`` and ``tenant_id`` are deliberately not id-like: the rule refuses ids of requests (and their parts) and
of people, which are unbounded and personal; the id of a bounded thing (a tenant, a piece of content) is for the
allowlist's review to judge, and ``tenant_id`` is the label Thanos itself stores every series under.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from tests.unit.test_profiles import MINIMAL, _render
from tokenlat import semconv
from tokenlat.attributes import AttributePolicy, is_id_like
from tokenlat_cli.profiles import load_profile
from tokenlat_cli.verify.checks import id_label_check

ID_LIKE = (
    "tokenlat.user.id_hash",
    "tokenlat_user_id_hash",
    "account_id",
    "customer.id",
    "message_id",
    "thread_id",
    "userId",
    "requestId",
    "endUserId",
    "HTTPRequestId",
    "UserID",
    "UserId",
    "request.id",
    "session.id",
    "requestid",
    "user.id",
    "enduser.id",
    "req_id",
    "session-id",
    "gen_ai.request.id",
    "gen_ai.response.id",
    "gen_ai.conversation.id",
    "span.id",
    "trace_id",
    semconv.REQUEST_ID,
    semconv.USER_ID_HASH,
)
NOT_ID_LIKE = (
    *semconv.METRIC_ATTRIBUTES,
    "gen_ai.request.model",
    "gen_ai.provider.name",
    "tokenlat.user.tier",
    "user.tier",
    "server.address",
    "http.route",
    "video_id",
    "tenant_id",
    "tokenlat.userid_count",
    "guid",
    "paid",
    "valid",
)
CASES = [pytest.param(key, True, id=key) for key in ID_LIKE] + [
    pytest.param(key, False, id=key) for key in dict.fromkeys(NOT_ID_LIKE)
]


def prometheus_label(key: str) -> str:
    """The label name a metric attribute key becomes in Prometheus: every character but letters, digits and
    underscores replaced by an underscore (as the Collector's remote-write exporter translates it)."""
    return "".join(c if c.isalnum() or c == "_" else "_" for c in key)


@pytest.mark.parametrize(("key", "id_like"), CASES)
def test_the_library_refuses_exactly_the_id_like_keys(key: str, id_like: bool) -> None:
    assert is_id_like(key) is id_like
    if id_like:
        with pytest.raises(ValueError, match="id-like"):
            AttributePolicy(allowed=[key])
    else:
        assert key in AttributePolicy(allowed=[key]).allowed


@pytest.mark.parametrize(("key", "id_like"), CASES)
def test_the_profile_schema_refuses_exactly_the_id_like_keys(
    key: str, id_like: bool, runner: CliRunner, tmp_path: Path
) -> None:
    attributes = yaml.safe_dump({"metrics": {"attributes": [key]}})
    code, output, out = _render(runner, tmp_path, MINIMAL + attributes)
    if id_like:
        assert code == 2, output
        assert (
            f"Error: {tmp_path / 'p.yaml'}: metrics.attributes[0]: {key!r} identifies a request or a user and must"
            " not become a metric label"
        ) in output
        assert not out.exists()
    else:
        assert code == 0, output
        assert load_profile(str(tmp_path / "p.yaml")).data["metrics"]["attributes"] == [key]


@pytest.mark.parametrize(("key", "id_like"), CASES)
def test_verify_flags_exactly_the_id_like_labels(key: str, id_like: bool) -> None:
    label = prometheus_label(key)
    check = id_label_check(["__name__", "le", "job", label])
    assert check.passed is not id_like
    assert check.observed == (label if id_like else "none")
