"""The private network the servers talk over (replication, LMTP, relay to mx1)."""

from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud

from mailstack import hosts as H
from mailstack.settings import Settings


class PrivateNetwork(pulumi.ComponentResource):
    network: hcloud.Network
    subnet: hcloud.NetworkSubnet

    def __init__(
        self,
        name: str,
        settings: Settings,
        network_zone: str,
        labels: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mailstack:index:PrivateNetwork", name, None, opts)
        net = H.network(settings)
        child = pulumi.ResourceOptions(parent=self)
        self.network = hcloud.Network(name, name=name, ip_range=net.cidr, labels=labels, opts=child)
        self.subnet = hcloud.NetworkSubnet(
            name,
            network_id=self.network.id.apply(int),
            type="cloud",
            network_zone=network_zone,
            ip_range=net.subnet,
            opts=child,
        )
        self.register_outputs({"networkId": self.network.id})
