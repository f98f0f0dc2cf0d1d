"""``render --what alertmanager``: Alertmanager's configuration, every alert to `tokenlat alert-relay`.

Alertmanager has no DingTalk or Feishu receiver, so every route ends at one webhook receiver, the relay
(``alerting.relay_url``), which sends each robot its own message within its rate limits (docs/alerting.md).

- Grouping by alert name and severity: one chat message per kind of alert, whatever the number of series that
  fire; timing from the profile (``alerting.group_wait``, ``group_interval``, ``repeat_interval``: 30s, 5m, 4h by
  default, which a chat of people can follow).
- ``send_resolved: true``: the chat hears when it is over.
- ``max_alerts``: the relay reads at most that many alerts of a notification anyway (the count of the rest is in
  the payload).
- Inhibition: a page silences the ticket of the same alert about the same model and provider: of the same name,
  and the slow burn of the TTFT budget while its fast burn pages.
"""

from __future__ import annotations

import yaml

from tokenlat_cli.profiles import Profile
from tokenlat_cli.relay.alerts import MAX_ALERTS

RECEIVER = "tokenlat-relay"
#: The labels that say what an alert is about (tokenlat_cli/operate/rules.py records every alert by them).
SUBJECT = ("gen_ai_provider_name", "gen_ai_request_model")
#: Alerts of the rules that are the page and the ticket of one condition under two names: the fast and the slow
#: burn of the TTFT error budget.
PAIRS = (("TokenlatTTFTBudgetBurn", "TokenlatTTFTBudgetBurnSlow"),)


def render(profile: Profile) -> str:
    alerting = profile.data["alerting"]
    config = {
        "route": {
            "receiver": RECEIVER,
            "group_by": ["alertname", "severity"],
            "group_wait": alerting["group_wait"],
            "group_interval": alerting["group_interval"],
            "repeat_interval": alerting["repeat_interval"],
        },
        "receivers": [
            {
                "name": RECEIVER,
                "webhook_configs": [
                    {"url": alerting["relay_url"], "send_resolved": True, "max_alerts": MAX_ALERTS},
                ],
            }
        ],
        "inhibit_rules": [
            {
                "source_matchers": ['severity="page"'],
                "target_matchers": ['severity="ticket"'],
                "equal": ["alertname", *SUBJECT],
            },
            *(
                {
                    "source_matchers": [f'alertname="{page}"'],
                    "target_matchers": [f'alertname="{ticket}"'],
                    "equal": list(SUBJECT),
                }
                for page, ticket in PAIRS
            ),
        ],
    }
    header = (
        f"# Alertmanager configuration of profile {profile.name}, rendered by "
        f"`tokenlat render --profile {profile.name} --what alertmanager`.\n"
        "# Every alert goes to `tokenlat alert-relay`, which sends it to the chat robots the profile names "
        "(docs/alerting.md).\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False)
