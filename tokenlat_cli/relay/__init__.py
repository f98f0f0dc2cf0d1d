"""`tokenlat alert-relay`: Alertmanager's webhook in, the team's chat robots out (DingTalk, Feishu/Lark, WeCom).

Alertmanager has no DingTalk or Feishu receiver, and reaches WeCom group robots only through a webhook. The relay
takes Alertmanager's webhook (JSON, version 4) and sends each robot a message it renders well, signed where the
robot asks for it, within the robot's own rate limits. Modules: alerts (the payload, bounded), messages (what each
robot gets), signing, ratelimit (the limits, on an injectable clock), robots (requests and responses of each
robot), outbox (one queue and sender per robot), server (the HTTP side and counters). docs/alerting.md is the
operator's guide.
"""
