"""Servers, their persistent public IPs, SSH keys and the imap mail volume.

Primary IPs are separate resources with `auto_delete=False` so a server can be rebuilt
(new image, new user-data) without losing its addresses, its PTRs or the reputation
attached to them. Because a primary IP can only be assigned to one server at a time,
servers are deleted before their replacement is created.
"""

from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud
import pulumi_tls as tls

from mailstack import cloudinit
from mailstack import hosts as H
from mailstack.settings import Settings

USER_DATA_LIMIT = 32 * 1024  # Hetzner rejects larger user-data


def kept(parent: pulumi.Resource) -> pulumi.ResourceOptions:
    """For what can't be rebuilt from code: the addresses (their sending reputation and
    PTRs took months) and the mail. `protect` makes Pulumi refuse to delete or replace
    them; `retain_on_delete` keeps them in Hetzner even once unprotected and deleted
    from the stack. Retiring a stack on purpose: README, "Retire a stack"."""
    return pulumi.ResourceOptions(parent=parent, protect=True, retain_on_delete=True)


def checked_user_data(settings: Settings, host: H.Host) -> str:
    data = cloudinit.user_data(settings, host)
    size = len(data.encode())
    if size > USER_DATA_LIMIT:
        raise ValueError(f"user-data for {host.role} is {size} bytes; Hetzner accepts at most {USER_DATA_LIMIT}")
    return data


class Servers(pulumi.ComponentResource):
    servers: dict[str, hcloud.Server]
    ipv4: dict[str, hcloud.PrimaryIp]
    ipv6: dict[str, hcloud.PrimaryIp]
    ssh_keys: list[hcloud.SshKey]
    volume: hcloud.Volume
    volume_attachment: hcloud.VolumeAttachment
    addresses: pulumi.Output[dict[str, H.Address]]

    def __init__(
        self,
        name: str,
        settings: Settings,
        hosts: dict[str, H.Host],
        *,
        network: hcloud.Network,
        subnet: hcloud.NetworkSubnet,
        firewalls: dict[str, hcloud.Firewall],
        deploy_key: tls.PrivateKey,
        labels: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mailstack:index:Servers", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        hz = settings.hetzner

        self.ssh_keys = [
            hcloud.SshKey(f"admin-{i}", name=f"{name}-admin-{i}", public_key=key.strip(), labels=labels, opts=child)
            for i, key in enumerate(settings.admin.ssh_keys)
        ]
        self.ssh_keys.append(
            hcloud.SshKey(
                "deploy", name=f"{name}-deploy", public_key=deploy_key.public_key_openssh, labels=labels, opts=child
            )
        )

        placement = hcloud.PlacementGroup("spread", name=name, type="spread", labels=labels, opts=child)

        self.servers, self.ipv4, self.ipv6 = {}, {}, {}
        for role, host in hosts.items():
            role_labels = {**labels, "role": role}
            for family, table in (("ipv4", self.ipv4), ("ipv6", self.ipv6)):
                # Unassigned at creation: the server's public_nets assigns it. An
                # assignee_type without an assignee_id is unused and, since the API reads
                # an unassigned IP back as "unassigned", a diff on every run.
                table[role] = hcloud.PrimaryIp(
                    f"{role}-{family}",
                    name=f"{host.fqdn}-{family}",
                    type=family,
                    location=hz.location,
                    auto_delete=False,
                    delete_protection=True,
                    labels=role_labels,
                    opts=kept(self),
                )

            self.servers[role] = hcloud.Server(
                role,
                name=host.fqdn,
                image=hz.image,
                server_type=getattr(hz.server_types, role),
                location=hz.location,
                placement_group_id=placement.id.apply(int),
                ssh_keys=[k.id for k in self.ssh_keys],
                user_data=checked_user_data(settings, host),
                firewall_ids=[firewalls[role].id.apply(int)],
                public_nets=[
                    hcloud.ServerPublicNetArgs(
                        ipv4_enabled=True,
                        ipv4=self.ipv4[role].id.apply(int),
                        ipv6_enabled=True,
                        ipv6=self.ipv6[role].id.apply(int),
                    )
                ],
                networks=[hcloud.ServerNetworkArgs(network_id=network.id.apply(int), ip=host.private_ip)],
                labels=role_labels,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    # The subnet must exist before a server can take an IP in it.
                    depends_on=[subnet],
                    delete_before_replace=True,
                    # Keys only matter at first boot, and the provider would replace
                    # every server when an admin key is added.
                    ignore_changes=["ssh_keys"],
                ),
            )

        store = H.find(hosts, H.IMAP)
        self.volume = hcloud.Volume(
            "mail-store",
            name=f"{name}-mail",
            size=hz.mail_volume_gb,
            format="ext4",
            location=hz.location,
            automount=False,
            delete_protection=True,
            labels={**labels, "role": store.role},
            opts=kept(self),
        )
        self.volume_attachment = hcloud.VolumeAttachment(
            "mail-store",
            volume_id=self.volume.id.apply(int),
            server_id=self.servers[store.role].id.apply(int),
            automount=False,
            opts=child,
        )

        self.addresses = pulumi.Output.all(
            **{role: pulumi.Output.all(self.ipv4[role].ip_address, self.ipv6[role].ip_address) for role in hosts}
        ).apply(lambda v: {role: H.Address(ipv4=a[0], ipv6=H.ipv6_host_address(a[1])) for role, a in v.items()})
        self.register_outputs({})
