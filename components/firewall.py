"""One Hetzner Firewall per role, rules from `mailstack.firewall.hcloud_rules`.

Attached through the server's `firewall_ids` rather than a FirewallAttachment, so a
new server is filtered from its first boot instead of after the attachment lands.
"""

from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud

from mailstack import firewall
from mailstack.hosts import Host
from mailstack.settings import Settings


def _rule_args(rule) -> hcloud.FirewallRuleArgs:
    ips = list(rule.source_ips or ())
    outbound = rule.direction == "out"
    destination = getattr(rule, "destination_ips", None)
    return hcloud.FirewallRuleArgs(
        direction=rule.direction,
        protocol=rule.protocol,
        port=str(rule.port) if rule.port not in (None, "") else None,
        source_ips=None if outbound else ips,
        destination_ips=list(destination or ips) if outbound else None,
        description=rule.description or None,
    )


class Firewalls(pulumi.ComponentResource):
    by_role: dict[str, hcloud.Firewall]

    def __init__(
        self,
        name: str,
        settings: Settings,
        hosts: dict[str, Host],
        labels: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mailstack:index:Firewalls", name, None, opts)
        self.by_role = {}
        for role, host in hosts.items():
            rules = [_rule_args(r) for r in firewall.hcloud_rules(settings, host)]
            self.by_role[role] = hcloud.Firewall(
                f"{role}",
                name=f"{name}-{role}",
                rules=rules,
                labels={**labels, "role": role},
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({})
