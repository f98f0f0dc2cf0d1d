"""The EnvironmentFile the systemd unit reads, as a list of names to fill in (`--what environment-file`).

Names and comments only: every line is a comment, so the rendered file (committed under deploy/, copied around)
can never hold a secret or a placeholder that looks like one; the operator writes the values on the host.
"""

from __future__ import annotations

from tokenlat_cli.operate import runtime, systemd
from tokenlat_cli.profiles import Profile
from tokenlat_cli.render import env_vars_referenced


def _meanings(profile: Profile) -> dict[str, str]:
    """What the profile says each variable it names is for."""
    p = profile.data
    auth = p["backend"]["auth"]
    meanings = {
        auth["credentials_env"]: "base64(user:password) of the backend's basic auth",
        auth["token_env"]: "the backend's bearer token",
        p["deidentification"][
            "salt_env"
        ]: "the salt user ids are hashed with (keep it stable: a new salt splits users)",
    }
    return {name: meaning for name, meaning in meanings.items() if name}


def variables(profile: Profile) -> list[str]:
    """Every variable any of the profile's Collector configs reads (agent and gateway alike)."""
    return sorted({v for tier in runtime.tiers(profile) for v in env_vars_referenced(tier.config(profile))})


def render(profile: Profile) -> str:
    meanings = _meanings(profile)
    lines = [
        f"# Environment of the tokenlat Collector, profile {profile.name} (`tokenlat render --what environment-file`).",
        f"# Install as {systemd.ENVIRONMENT_FILE}, owned by root, mode 0600: systemd reads it before the service",
        "# starts, the Collector never does. Uncomment each line and put the value after the =; no quotes needed.",
    ]
    names = variables(profile)
    if not names:
        lines.append("# This profile's Collector reads no variable: the file may stay empty.")
    for name in names:
        lines += ["#", f"# {name}: {meanings.get(name, 'read by the rendered config as ${env:' + name + '}')}"]
        lines.append(f"#{name}=")
    return "\n".join(lines) + "\n"
