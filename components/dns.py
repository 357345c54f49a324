"""Public DNS (zones and rrsets, when the stack manages them) and reverse DNS.

The set of rrsets depends on the settings alone; only their values wait for addresses
and DKIM keys. So the rrsets are declared up front (a preview lists every one of them),
each taking its values from the full record list once those are known.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_hcloud as hcloud

from mailstack import dkim, dns
from mailstack import hosts as H
from mailstack.settings import Settings

# Only shapes matter here: every rrset's key (zone, name, type) must not depend on values.
_PLACEHOLDER_ADDRESSES = {role: H.Address(f"192.0.2.{10 + i}", f"2001:db8:0:{i}::1") for i, role in enumerate(H.ROLES)}
# Any 2048-bit public key: it gives the DKIM TXT rrset its shape before the real key exists.
_PLACEHOLDER_DKIM_PEM = """-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAuTJ4NftfVT1Lty+F0WsB
NP/0hTl3A3sIZllHQv2OuzrdVuDR9zuDKuEFoOezp49sSyi+a6O7sIPJK0M9SLn0
qyrR4gHxKVLb1vEqY6F6RaWGrXLO8qranmXxrvSw1U8GzzydI1dOHidGvSzIk15a
jRBCf2/C3VpMIrfT4/O1y+lOG65I0aXHyxhdIanXDODsSqXMcEeRTG5yQiQLYgK2
+RgeEkjRn1GE/CJB1aHDHMtMc2d+KgPk2a+I4VM8Ei9hobvqSGSpIHE725IgIabV
6Ir/ADs5WO6vlbxATQBTgju26ND6V/zhCwqAsmsn2Uy1xtVn59FJ0uearZWHhlZs
vwIDAQAB
-----END PUBLIC KEY-----
"""
# Hetzner creates and owns the apex SOA and NS rrsets of a primary zone.
_ENGINE_OWNED = {("@", "SOA"), ("@", "NS")}

RrsetKey = tuple[str, str, str]  # zone, name, type


def _grouped(records) -> dict[RrsetKey, tuple[int, list[str]]]:
    out: dict[RrsetKey, tuple[int, list[str]]] = {}
    for r in records:
        key = (r.zone, r.name, r.type)
        ttl, values = out.setdefault(key, (r.ttl, []))
        values.extend(v for v in r.values if v not in values)
    return out


def dkim_values(public_pems: Mapping[str, str]) -> dict[str, str]:
    return {d: dns.dkim_public_value(pem) for d, pem in public_pems.items()}


class PublicDns(pulumi.ComponentResource):
    zones: dict[str, hcloud.Zone]
    rrsets: list[hcloud.ZoneRrset]
    records: pulumi.Output[list]
    nameservers: pulumi.Output[dict[str, list[str]]]
    zone_files: pulumi.Output[dict[str, str]] | None

    def __init__(
        self,
        name: str,
        settings: Settings,
        hosts: dict[str, H.Host],
        *,
        addresses: pulumi.Output[dict[str, H.Address]],
        dkim_public_pems: pulumi.Output[dict[str, str]],
        dkim_published_pems: pulumi.Input[dict[str, dict[str, str]]] | None = None,
        labels: dict[str, str],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mailstack:index:PublicDns", name, None, opts)
        # Which DKIM selectors are published is the rotation schedule's (the settings'),
        # never the keys': every one of them gets the placeholder here.
        any_key = dkim_values({d: _PLACEHOLDER_DKIM_PEM for d in settings.domains})
        placeholder = dns.records(
            settings,
            {r: _PLACEHOLDER_ADDRESSES[r] for r in hosts},
            any_key,
            {sel: any_key for sel in dkim.plan(settings).selectors},
        )
        shape = _grouped(placeholder)

        def real_records(v) -> list:
            addrs, pems, others = v
            records = dns.records(
                settings, addrs, dkim_values(pems), {sel: dkim_values(p) for sel, p in (others or {}).items()}
            )
            if set(_grouped(records)) != set(shape):
                raise AssertionError("DNS rrsets depend on address or key values; they must not")
            return records

        self.records = pulumi.Output.all(addresses, dkim_public_pems, dkim_published_pems or {}).apply(real_records)
        grouped = self.records.apply(_grouped)

        self.zones, self.rrsets = {}, []
        self.zone_files = None
        if settings.dns.manage_zone:
            for zone in dns.zones(settings):
                self.zones[zone] = hcloud.Zone(
                    zone,
                    name=zone,
                    mode="primary",
                    ttl=settings.dns.ttl,
                    delete_protection=True,
                    labels=labels,
                    # Without its zone no mail arrives, so Pulumi refuses to delete it;
                    # the records come from code, so nothing needs retaining.
                    opts=pulumi.ResourceOptions(parent=self, protect=True),
                )
            for key in sorted(shape):
                zone, rname, rtype = key
                if (rname, rtype) in _ENGINE_OWNED:
                    continue
                self.rrsets.append(
                    hcloud.ZoneRrset(
                        f"{zone}/{rname}/{rtype}",
                        zone=self.zones[zone].name,
                        name=rname,
                        type=rtype,
                        ttl=shape[key][0],
                        records=grouped.apply(
                            lambda g, key=key: [hcloud.ZoneRrsetRecordArgs(value=v) for v in g[key][1]]
                        ),
                        opts=pulumi.ResourceOptions(parent=self),
                    )
                )
            self.nameservers = pulumi.Output.all(
                **{
                    zone: z.authoritative_nameservers.apply(
                        lambda ns: sorted(
                            ns.get("assigneds") or [] if isinstance(ns, dict) else getattr(ns, "assigneds", None) or []
                        )
                    )
                    for zone, z in self.zones.items()
                }
            )
        else:
            self.nameservers = pulumi.Output.from_input({})
            self.zone_files = self.records.apply(
                lambda records: {
                    zone: dns.zone_file(zone, [r for r in records if r.zone == zone], nameservers=[])
                    for zone in dns.zones(settings)
                }
            )
        self.register_outputs({})


class ReverseDns(pulumi.ComponentResource):
    """PTRs on the primary IPs (not the servers), so they outlive a server rebuild."""

    def __init__(
        self,
        name: str,
        settings: Settings,
        hosts: dict[str, H.Host],
        *,
        ipv4: dict[str, hcloud.PrimaryIp],
        ipv6: dict[str, hcloud.PrimaryIp],
        addresses: pulumi.Output[dict[str, H.Address]],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mailstack:index:ReverseDns", name, None, opts)
        ptrs = addresses.apply(lambda a: {(p.role, p.family): p for p in dns.ptr_records(settings, a)})
        self.by_role: dict[str, list[hcloud.Rdns]] = {}
        for role in hosts:
            for family, ips in (("ipv4", ipv4), ("ipv6", ipv6)):
                ptr = ptrs.apply(lambda t, k=(role, family): _find_ptr(t, k))
                self.by_role.setdefault(role, []).append(
                    hcloud.Rdns(
                        f"{role}-{family}",
                        primary_ip_id=ips[role].id.apply(int),
                        ip_address=ptr.apply(lambda p: p.ip),
                        dns_ptr=ptr.apply(lambda p: p.name.rstrip(".")),
                        opts=pulumi.ResourceOptions(parent=self),
                    )
                )
        self.register_outputs({})


def _family(value) -> str:
    text = str(value).lower()
    return "ipv6" if text in ("6", "ipv6", "aaaa") else "ipv4" if text in ("4", "ipv4", "a") else text


def _find_ptr(table: dict, key: tuple[str, str]):
    for (role, family), p in table.items():
        if (role, _family(family)) == key:
            return p
    raise KeyError(f"dns.ptr_records has no {key[1]} PTR for {key[0]}")
