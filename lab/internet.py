"""The lab's internet host, in the lab namespace itself: knot (authoritative for the
stack's zones, their reverse zones and the lab's own names) and Pebble (ACME; its HTTP-01
validation really connects to the hosts' port 80). The outside MTA (Postfix) is in
lab/outside_mta.py.

A lab CA (made per run) signs Pebble's HTTPS listener and the outside MTA's certificate;
the hosts trust it and Pebble's issuing root, written into their overlay before boot.
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.request
from pathlib import Path

import dns.exception

from mailstack.backup import STORAGE_BOX_PATH, STORAGE_BOX_PORT

from . import dns_root, net, pki
from .util import NETNS, ROOT, STATE, log, run, stop_pidfile, wait_until, write_private

# Not under .test: unbound answers the special-use names (.test, .invalid) itself.
LAB_ZONE = "lab.example.com"
OUTSIDE_DOMAIN = "outside.example.com"
OUTSIDE_MX = f"mx.{OUTSIDE_DOMAIN}"
NS_NAME = f"ns1.{LAB_ZONE}."
ACME_NAME = f"acme.{LAB_ZONE}"
PEBBLE_DIR = f"https://{net.INTERNET_V4}:14000/dir"
PEBBLE_MGMT = f"https://{net.INTERNET_V4}:15000"
CAA_ISSUER = "pebble.lab.example.com"
TLSDIR = STATE / "tls"


# ------------------------------------------------------------------ lab CA


def make_ca() -> None:
    """A fresh CA per run, and leaf certificates for Pebble and the outside MTA."""
    issuer = pki.ca("mailstack lab CA")
    TLSDIR.mkdir(parents=True, exist_ok=True)
    (TLSDIR / "lab-ca.pem").write_text(pki.pem(issuer[1]))
    for name, dns_names, ips in (
        ("pebble", [ACME_NAME], [net.INTERNET_V4, net.INTERNET_V6]),
        ("outside", [OUTSIDE_MX], [net.OUTSIDE_V4]),
    ):
        key, cert = pki.leaf(issuer, dns_names, ips)
        (TLSDIR / f"{name}.pem").write_text(pki.pem(cert))
        write_private(TLSDIR / f"{name}.key", pki.pem_key(key))


def lab_ca_pem() -> str:
    return (TLSDIR / "lab-ca.pem").read_text()


# ------------------------------------------------------------------ processes


def _spawn(name: str, argv: list[str], env: dict | None = None) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    import os

    e = dict(os.environ)
    e.update(env or {})
    proc = subprocess.Popen(
        ["ip", "netns", "exec", NETNS, *argv],
        cwd=str(ROOT),
        env=e,
        stdin=subprocess.DEVNULL,
        stdout=open(STATE / f"{name}.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (STATE / f"{name}.pid").write_text(str(proc.pid))


def stop(name: str) -> None:
    stop_pidfile(STATE / f"{name}.pid")


# ------------------------------------------------------------------ knot

KNOT_DIR = STATE / "knot"


def knot_conf(zones: list[str]) -> str:
    lines = [
        "server:",
        f"  rundir: {KNOT_DIR}",
        f"  listen: [ {net.INTERNET_V4}@53, {net.INTERNET_V6}@53 ]",
        "database:",
        f"  storage: {KNOT_DIR}/db",
        "log:",
        "  - target: stderr",
        "    any: info",
        *dns_root.KNOT_POLICY,
        "template:",
        "  - id: default",
        f"    storage: {KNOT_DIR}/zones",
        '    file: "%s.zone"',
        "    zonefile-sync: -1",
        "    journal-content: none",
        "zone:",
    ]
    for z in zones:
        lines.append(f"  - domain: {z}")
        if z == ".":
            lines += ["    file: root.zone", *dns_root.KNOT_ZONE_SIGNING]
    return "\n".join(lines) + "\n"


def write_zones(zone_texts: dict[str, str]) -> None:
    (KNOT_DIR / "zones").mkdir(parents=True, exist_ok=True)
    for z, text in zone_texts.items():
        (KNOT_DIR / "zones" / ("root.zone" if z == "." else f"{z}.zone")).write_text(text)
    (KNOT_DIR / "knot.conf").write_text(knot_conf(sorted(zone_texts)))


def start_knot(zone_texts: dict[str, str]) -> None:
    write_zones(zone_texts)
    (KNOT_DIR / "db").mkdir(parents=True, exist_ok=True)
    run(["knotc", "-c", str(KNOT_DIR / "knot.conf"), "conf-check"], capture=True)
    _spawn("knot", ["knotd", "-c", str(KNOT_DIR / "knot.conf")])
    wait_until(lambda: knot_answers(next(iter(zone_texts))), 20, "knot to serve the zones")
    wait_until(lambda: _root_anchor() is not None, 20, "knot to sign the root")
    log(f"knot serves {len(zone_texts)} zones on {net.INTERNET_V4}:53")


def reload_knot(zone_texts: dict[str, str]) -> None:
    write_zones(zone_texts)
    run(["knotc", "-c", str(KNOT_DIR / "knot.conf"), "reload"], capture=True)


def knot_answers(zone: str) -> bool:
    r = run(
        ["kdig", f"@{net.INTERNET_V4}", "+short", "+timeout=1", "+retry=0", zone, "SOA"],
        netns=True,
        capture=True,
        check=False,
    )
    return r.returncode == 0 and bool(r.stdout.strip())


def root_zone(children: list[str]) -> dict[str, str]:
    """The lab's root (lab/dns_root.py): signed, delegating every other zone knot serves.
    Resolvers that probe `. NS` for liveness (the unbound step does) get an answer, and
    every name outside the lab's zones is NXDOMAIN (their parents, such as example.com,
    are empty non-terminals: no data)."""
    return {".": dns_root.zone(children, NS_NAME, net.INTERNET_V4, net.INTERNET_V6, f"hostmaster.{LAB_ZONE}.")}


def _root_anchor() -> str | None:
    from .netns import inside

    try:
        with inside():
            return dns_root.trust_anchor(net.INTERNET_V4)
    except (OSError, RuntimeError, dns.exception.DNSException):
        return None


def host_root_files() -> dict[str, str]:
    """What a host needs to recurse from the lab's root: hints and the root's key, read
    from knot once it has signed (written into the host's overlay before it boots, like
    the lab's CAs; never by mailstack's own rendering)."""
    anchor = _root_anchor()
    if anchor is None:
        raise RuntimeError(f"knot on {net.INTERNET_V4} serves no signed root")
    return dns_root.host_files(dns_root.hints(NS_NAME, net.INTERNET_V4, net.INTERNET_V6), anchor)


def lab_zones(ptr_extra: list) -> dict[str, str]:
    """Zones for the lab's own names: the outside MTA's domain and the lab services."""
    ns = [NS_NAME]
    return {
        LAB_ZONE: "\n".join(
            [
                f"$ORIGIN {LAB_ZONE}.",
                "$TTL 60",
                f"@ IN SOA {NS_NAME} hostmaster.{LAB_ZONE}. 1 60 60 3600 60",
                f"@ IN NS {NS_NAME}",
                f"ns1 IN A {net.INTERNET_V4}",
                f"ns1 IN AAAA {net.INTERNET_V6}",
                f"acme IN A {net.INTERNET_V4}",
            ]
        )
        + "\n",
        OUTSIDE_DOMAIN: "\n".join(
            [
                f"$ORIGIN {OUTSIDE_DOMAIN}.",
                "$TTL 60",
                f"@ IN SOA {NS_NAME} hostmaster.{LAB_ZONE}. 1 60 60 3600 60",
                f"@ IN NS {ns[0]}",
                "@ IN MX 10 mx",
                f'@ IN TXT "v=spf1 ip4:{net.OUTSIDE_V4} ip6:{net.OUTSIDE_V6} -all"',
                f"mx IN A {net.OUTSIDE_V4}",
                f"mx IN AAAA {net.OUTSIDE_V6}",
            ]
        )
        + "\n",
    }


# A DNSBL of the lab's own under the real list's name, so the hosts' resolvers ask it
# exactly as they would ask Spamhaus. Negative answers live 1 s, so a listing shows at once.
DNSBL_ZONE = "zen.spamhaus.org"


def dnsbl_zone(listed: dict[str, str] | None = None) -> dict[str, str]:
    """listed: IPv4 address -> answer (127.0.0.2: listed in the SBL)."""
    lines = [
        f"$ORIGIN {DNSBL_ZONE}.",
        "$TTL 1",
        f"@ IN SOA {NS_NAME} hostmaster.{LAB_ZONE}. 1 60 60 3600 1",
        f"@ IN NS {NS_NAME}",
    ]
    for ip, answer in sorted((listed or {}).items()):
        lines.append(f"{'.'.join(reversed(ip.split('.')))} IN A {answer}")
    return {DNSBL_ZONE: "\n".join(lines) + "\n"}


# ------------------------------------------------------------------ pebble


# Pebble's certificates live as long as Let's Encrypt's will from 2028 (45 days, against
# Pebble's own five years), so certbot's default window (renew 30 days before expiry)
# keeps a fresh one for 15 days: nothing renews during a lab run unless a scenario
# (renewal) says the window is wider.
PEBBLE_CERT_DAYS = 45


def start_pebble() -> None:
    d = STATE / "pebble"
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"{net.INTERNET_V4}:14000",
                    "managementListenAddress": f"{net.INTERNET_V4}:15000",
                    "certificate": str(TLSDIR / "pebble.pem"),
                    "privateKey": str(TLSDIR / "pebble.key"),
                    "httpPort": 80,
                    "tlsPort": 443,
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                    "certificateValidityPeriod": PEBBLE_CERT_DAYS * 86400,
                }
            },
            indent=2,
        )
    )
    _spawn(
        "pebble",
        ["pebble", "-config", str(d / "config.json"), "-dnsserver", f"{net.INTERNET_V4}:53", "-strict=false"],
        env={"PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "100"},
    )
    wait_until(lambda: _pebble_root() is not None, 20, "pebble")
    log(f"pebble ACME directory {PEBBLE_DIR}")


def _pebble_get(path: str) -> str:
    from .netns import inside

    ctx = ssl.create_default_context(cafile=str(TLSDIR / "lab-ca.pem"))
    with inside():
        with urllib.request.urlopen(f"{PEBBLE_MGMT}{path}", context=ctx, timeout=5) as r:
            return r.read().decode()


def _pebble_root() -> str | None:
    try:
        return _pebble_get("/roots/0")
    except OSError:
        return None


def pebble_roots() -> str:
    """Pebble's issuing root and intermediate (new every Pebble start)."""
    return _pebble_get("/roots/0") + _pebble_get("/intermediates/0")


# ------------------------------------------------------------------ storage host

STORAGE_PORT = STORAGE_BOX_PORT  # as on a Storage Box


def storage_repositories() -> Path:
    """Where the hosts' restic repositories are on the storage host."""
    return storage().home / STORAGE_BOX_PATH


def storage():
    from . import storage as LS

    return LS.Storage(STATE / "storage", net.STORAGE_V4, STORAGE_PORT)


def prepare_storage() -> None:
    """Host key first: the stack's settings pin it (backup.knownHosts)."""
    st = storage()
    if not st.host_key.exists():
        st.base.mkdir(parents=True, exist_ok=True)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mailstack-lab-storage", "-f", str(st.host_key)])


def start_storage(public_keys: list[str]) -> None:
    from . import storage as LS

    st = storage()
    LS.prepare(st, public_keys)
    _spawn("storage", LS.command(st))
    LS.wait_listening(st, 10, NETNS)
    log(f"storage host (sshd, SFTP only) on {net.STORAGE_V4}:{STORAGE_PORT}")
