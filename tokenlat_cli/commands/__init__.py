"""The subcommands of `tokenlat`, one module each, and what each needs: kept free of click, so that the console
script (tokenlat_cli.entry) can name a missing extra before anything imports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    extra: str
    summary: str  # the listing's line, so `tokenlat --help` works without any command's extra (a test keeps it true)

    def module(self, name: str) -> str:
        return f"tokenlat_cli.commands.{self.attribute(name)}"

    def attribute(self, name: str) -> str:
        """The click command's name in its module: the command's, with - as _ (alert-relay: alert_relay)."""
        return name.replace("-", "_")


COMMANDS: dict[str, Command] = {
    "render": Command("cli", "Render the Collector configuration of a profile, or (--what) what operates on its data."),
    "verify": Command("cli", "Prove the path end to end: known token timings through the real Collector and backend."),
    "profiles": Command("cli", "List the built-in profiles with their descriptions."),
    "sidecar": Command(
        "sidecar", "Proxy a model server and record the token latency of its streams, without touching the server."
    ),
    "alert-relay": Command(
        "cli", "Relay Alertmanager's webhook to DingTalk, Feishu/Lark and WeCom group robots, within their rate limits."
    ),
}
