"""The whole mail system as one component: network, firewalls, servers, DNS, deploy steps."""

from __future__ import annotations

import re

import pulumi

from mailstack import dkim, dns
from mailstack import hosts as H
from mailstack.catalogue import Location
from mailstack.settings import Settings

from .backup import BackupStorage
from .deploy import DeploySteps
from .dns import PublicDns, ReverseDns
from .firewall import Firewalls
from .network import PrivateNetwork
from .secrets import StackSecrets
from .servers import Servers


def _label(value: str) -> str:
    # Hetzner label values: at most 63 of [a-z0-9._-], alphanumeric at both ends.
    return re.sub(r"[^a-z0-9._-]", "-", value.lower())[:63].strip("-._") or "x"


class MailStack(pulumi.ComponentResource):
    outputs: dict[str, pulumi.Input]

    def __init__(self, name: str, settings: Settings, location: Location, opts: pulumi.ResourceOptions | None = None):
        """`location`: the stack's location as Hetzner's catalogue describes it
        (`components.catalogue.check`)."""
        super().__init__("mailstack:index:MailStack", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        stack = pulumi.get_stack()
        prefix = f"mailstack-{_label(stack)}"
        labels = {"mailstack": _label(stack)}
        hosts = H.hosts(settings)

        secrets = StackSecrets("secrets", settings, opts=child)
        net = PrivateNetwork(prefix, settings, location.network_zone, labels, opts=child)
        firewalls = Firewalls(prefix, settings, hosts, labels, opts=child)
        servers = Servers(
            prefix,
            settings,
            hosts,
            network=net.network,
            subnet=net.subnet,
            firewalls=firewalls.by_role,
            deploy_key=secrets.deploy_key,
            labels=labels,
            opts=child,
        )
        rdns = ReverseDns(
            "reverse-dns",
            settings,
            hosts,
            ipv4=servers.ipv4,
            ipv6=servers.ipv6,
            addresses=servers.addresses,
            opts=child,
        )
        public = PublicDns(
            "public-dns",
            settings,
            hosts,
            addresses=servers.addresses,
            dkim_public_pems=secrets.dkim_public_pems,
            dkim_published_pems=secrets.dkim_published_pems,
            labels=labels,
            opts=child,
        )

        storage = BackupStorage(
            f"{prefix}-backup", settings, public_keys=secrets.storage_box_keys, labels=labels, opts=child
        )

        store = H.find(hosts, H.IMAP).role
        extras: dict[str, list[pulumi.Resource]] = {r: list(rdns.by_role[r]) for r in hosts}
        # Dovecot must find the volume attached before anything writes to /var/vmail.
        extras[store].append(servers.volume_attachment)
        steps = DeploySteps(
            "deploy",
            settings,
            hosts,
            servers=servers.servers,
            addresses=servers.addresses,
            secrets=secrets.value,
            storage_box=storage.access,
            private_key=secrets.deploy_key.private_key_openssh,
            host_extras=extras,
            dns_ready=[*public.zones.values(), *public.rrsets],
            opts=child,
        )
        self.steps = steps

        nameservers = public.nameservers
        self.outputs = {
            "addresses": servers.addresses.apply(
                lambda a: {r: {"ipv4": x.ipv4, "ipv6": x.ipv6} for r, x in sorted(a.items())}
            ),
            "hostnames": {
                **{r: h.fqdn for r, h in hosts.items()},
                "smtp": settings.fqdn("smtp"),
            },
            "nameservers": nameservers,
            "dnsRecords": public.records.apply(dns.records_table),
            "deployPublicKey": secrets.deploy_key.public_key_openssh,
            # For an SFTP target the stack doesn't create: put these in its authorized_keys.
            "backupPublicKeys": secrets.backup_public_keys,
            "initialPasswords": secrets.initial_passwords_output,
            "nextSteps": nameservers.apply(lambda ns: next_steps(settings, ns)),
        }
        if public.zone_files is not None:
            self.outputs["zoneFile"] = public.zone_files
        if settings.dkim.rotation_days:
            # The phase this run deployed (docs/dkim.md); `mailstack status` checks it.
            keys = dkim.plan(settings)
            self.outputs["dkimSchedule"] = {
                "now": dkim.clock(settings).isoformat(),
                "phase": keys.phase,
                "signing": keys.signing.selector,
                "published": list(keys.selectors),
                "nextChange": keys.next_change.isoformat() if keys.next_change else None,
            }
        self.register_outputs(self.outputs)


def next_steps(settings: Settings, nameservers: dict[str, list[str]]) -> str:
    lines = [
        "1. Ask Hetzner support to unblock outbound ports 25 and 465 for this project "
        "(new projects can't send mail until they do; 587 is open).",
    ]
    if settings.dns.manage_zone:
        lines.append("2. At each domain's registrar, delegate the zone to Hetzner's nameservers:")
        for zone, ns in sorted(nameservers.items()):
            lines.append(f"     {zone}: {', '.join(ns) if ns else '(see the Hetzner console)'}")
    else:
        lines.append(
            "2. Load `pulumi stack output zoneFile` into your DNS host, then run `pulumi up` "
            "again so the certificate steps can pass."
        )
    lines += [
        "3. Read the users' initial passwords with "
        "`pulumi stack output initialPasswords --show-secrets` and hand them over.",
        "4. Check `pulumi stack output dnsRecords` against public DNS (PTRs are set by the stack).",
    ]
    return "\n".join(lines) + "\n"
