"""Rendering a profile into a Collector configuration.

The template holds the layout; this module derives the few values that would be unreadable to build in jinja
(OTTL statements, the list of extensions, the environment variables the config needs). Rendering is a pure
function of the profile, so the committed configs of the built-in profiles can be checked for drift.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2

from tokenlat_cli.profiles import Profile

_ENV_IN_TEXT = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)")


def env_vars_referenced(config_text: str) -> list[str]:
    """The environment variables a rendered config reads, sorted."""
    return sorted(set(_ENV_IN_TEXT.findall(config_text)))


def env_ref(var: str) -> str:
    return "${env:" + var + "}"


def _quote(value: object) -> str:
    """A YAML scalar that is read back exactly.

    JSON strings are valid YAML and escape everything needed; a printable string holding double quotes (an OTTL
    statement) reads better single-quoted, where only the single quote itself needs doubling.
    """
    if isinstance(value, str) and '"' in value and value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    return json.dumps(value, ensure_ascii=False)


def _ottl_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True)
class BackendAuth:
    scheme: str
    token: str


def _auth(profile: dict[str, Any]) -> BackendAuth | None:
    auth = profile["backend"]["auth"]
    if auth["kind"] == "bearer":
        return BackendAuth("Bearer", env_ref(auth["token_env"]))
    if auth["kind"] == "basic":
        # bearertokenauth with scheme Basic sends "Authorization: Basic <base64(user:password)>": basicauth does
        # not resolve at the pinned release, and this needs no extra component.
        return BackendAuth("Basic", env_ref(auth["credentials_env"]))
    return None


def _deidentify_statements(profile: dict[str, Any]) -> list[str]:
    # The salt is an OTTL string literal filled in by the Collector from the environment at start.
    salt = _ottl_string(env_ref(profile["deidentification"]["salt_env"]))
    statements = []
    for key in profile["deidentification"]["user_id_attributes"]:
        attr = f"span.attributes[{_ottl_string(key)}]"
        statements.append(f'set({attr}, SHA256(Concat([{salt}, {attr}], ":"))) where {attr} != nil')
    return statements


def template_context(profile: Profile) -> dict[str, Any]:
    p = profile.data
    auth = _auth(p)
    extensions = ["health_check"] + (["bearertokenauth/backend"] if auth else [])
    allowlist = ", ".join(_ottl_string(key) for key in p["metrics"]["attributes"])
    context: dict[str, Any] = {
        "profile": profile,
        "p": p,
        "auth": auth,
        "headers": p["backend"]["headers"],
        "extension_names": extensions,
        "metric_allowlist_statement": f"keep_keys(datapoint.attributes, [{allowlist}])",
        "deidentify_statements": _deidentify_statements(p),
        "slow_ttft_condition": (
            f'span.attributes["gen_ai.response.time_to_first_chunk"] != nil and '
            f'span.attributes["gen_ai.response.time_to_first_chunk"] > {p["traces"]["slow_ttft_seconds"]}'
        ),
    }
    return context


def _environment() -> jinja2.Environment:
    loader = jinja2.FileSystemLoader(str(resources.files("tokenlat_cli") / "templates"))
    env = jinja2.Environment(
        loader=loader,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,  # YAML, not HTML; values are quoted with the q filter
    )
    env.filters["q"] = _quote
    return env


def render_collector_config(profile: Profile) -> str:
    template = _environment().get_template("collector.yaml.j2")
    body = template.render(template_context(profile), env_vars=[])
    # The header lists every variable the body references, so an operator sees them before deploying.
    env_vars = env_vars_referenced(body)
    text = template.render(template_context(profile), env_vars=env_vars)
    return text
