"""Bring the whole lab up and take it down again; every phase timed."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

from mailstack import cloudinit, deploy, dns
from mailstack import hosts as H

from . import aptcache, config, forward, internet, machines, net, outside_mta, rootfs, steps
from .util import NETNS, STATE, log, run

ROLES_FILE = STATE / "roles.json"
TIMINGS_FILE = STATE / "timings.json"
# Loopback ports for `make lab-up`: mail clients on this machine reach the lab hosts.
LOOPBACK = [
    ("mx1", 25, 10025),
    ("mx1", 587, 10587),
    ("mx1", 465, 10465),
    ("imap", 993, 10993),
    ("imap", 4190, 14190),
    ("mx2", 25, 10026),
]


def _roles() -> list[str]:
    try:
        return json.loads(ROLES_FILE.read_text())
    except (OSError, ValueError):
        return ["mx1", "imap", "mx2"]


def zone_texts(
    s,
    data,
    drop: tuple[tuple[str, str], ...] = (),
    ptr_names: dict[str, str] | None = None,
    dnsbl_listed: dict[str, str] | None = None,
) -> dict[str, str]:
    """Every zone knot serves. The status scenario's faults: `drop` (fqdn, type) records,
    `ptr_names` ip -> a different PTR name, `dnsbl_listed` addresses on the lab DNSBL."""
    addrs = config.addresses(s)
    recs = [
        r
        for r in dns.records(s, addrs, config.dkim_public(s, data), config.dkim_published(s, data))
        if (r.fqdn, r.type) not in drop
    ]
    out = {z: dns.zone_file(z, recs, [internet.NS_NAME]) for z in dns.zones(s)}
    ptrs = dns.ptr_records(s, addrs) + [
        dns.Ptr(net.OUTSIDE_V4, f"{internet.OUTSIDE_MX}.", "outside", 4),
        dns.Ptr(net.OUTSIDE_V6, f"{internet.OUTSIDE_MX}.", "outside", 6),
        # The loopback forwarder of `make lab-up` connects from here: with forward-confirmed
        # rDNS, a mail client on this machine passes mx1's connect filters on port 25.
        dns.Ptr(net.INTERNET_V4, internet.NS_NAME, "internet", 4),
    ]
    ptrs = [dns.Ptr(p.ip, (ptr_names or {}).get(p.ip, p.name), p.role, p.family) for p in ptrs]
    out.update(dns.reverse_zone_files(ptrs, [internet.NS_NAME]))
    out.update(internet.lab_zones([]))
    out.update(internet.dnsbl_zone(dnsbl_listed))
    out.update(internet.root_zone(list(out)))
    return out


def republish(s, **tweaks) -> None:
    """Reload knot with the zones of settings `s` (what `pulumi up` does to the DNS
    zone), with zone_texts' tweaks."""
    internet.reload_knot(zone_texts(s, config.load_or_make_secrets(s), **tweaks))


def up(topology: str | None = None) -> dict:
    t_start = time.monotonic()
    timings: dict[str, float] = {}
    down(quiet=True)
    STATE.mkdir(parents=True, exist_ok=True)
    internet.prepare_storage()  # its host key is pinned in the settings
    overrides = {"topology": topology} if topology else {}
    s = config.settings(**overrides)
    if overrides:
        config.OVERRIDES_FILE.write_text(json.dumps(overrides))
    roles = list(H.hosts(s))
    ROLES_FILE.write_text(json.dumps(roles))

    t = time.monotonic()
    aptcache.start_cache()
    base = rootfs.ensure()
    timings["rootfs (cached after first run)"] = time.monotonic() - t

    t = time.monotonic()
    net.up()
    # Hetzner's firewall is attached when a server is created: in front of it from its
    # first packet.
    net.edge_up(s, config.addresses(s))
    aptcache.start_forwarder()
    data = config.load_or_make_secrets(s)
    ctx = config.context(s, data)
    internet.make_ca()
    internet.start_knot(zone_texts(s, data))
    internet.start_pebble()
    internet.start_storage(config.storage_box_creation_keys(data))
    (STATE / "tls" / "pebble-roots.pem").write_text(internet.pebble_roots())
    outside_mta.start(base, internet.TLSDIR, (STATE / "tls" / "pebble-roots.pem").read_text())
    ca = _host_cas()
    root_files = internet.host_root_files()
    timings["internet host"] = time.monotonic() - t

    t = time.monotonic()
    booted: dict[str, float] = {}
    for role, h in ctx.hosts.items():
        machines.prepare(
            role,
            base,
            h.fqdn,
            cloudinit.user_data(s, h),
            machines.network_config(role, h.private_ip),
            ca,
            root_files,
        )
        machines.start(role)
    log(f"booting {', '.join(roles)}; cloud-init installs the mail packages")
    booted = _wait_cloud_init(roles, t)
    timings["boot + cloud-init (all hosts)"] = time.monotonic() - t
    for role, dt in booted.items():
        timings[f"  {role} boot-to-cloud-init-done"] = dt

    t_boot, t = t, time.monotonic()
    ended: dict[str, float] = {}
    step_times = steps.run_plan(ctx, finished=ended)
    timings["deploy steps (several at once)"] = time.monotonic() - t
    for name, dt in step_times.items():
        timings[f"  step {name}"] = dt
    for role in booted:
        # Mail-ready: the host's last step has ended (the steps run in parallel).
        last = max(ended[st.name] for st in deploy.plan(s) if st.host == role)
        timings[f"  {role} boot-to-mail-ready"] = last - t_boot

    forward.start(
        "loopback-forwarder",
        [(False, "127.0.0.1", lp, net.public_v4(role), port) for role, port, lp in LOOPBACK if role in roles],
    )
    timings["lab up total"] = time.monotonic() - t_start
    TIMINGS_FILE.write_text(json.dumps(timings))
    return timings


def _host_cas() -> dict[str, str]:
    """The CAs a host trusts: the lab's, and Pebble's root and intermediate."""
    ca = {"mailstack-lab-ca": internet.lab_ca_pem()}
    for i, pem in enumerate(_split_pems((STATE / "tls" / "pebble-roots.pem").read_text())):
        ca[f"mailstack-lab-pebble-{i}"] = pem
    return ca


def _wait_cloud_init(roles: list[str], t: float) -> dict[str, float]:
    """Seconds from t until cloud-init finished on each host; raises if it failed."""
    booted: dict[str, float] = {}
    pending = set(roles)
    deadline = time.monotonic() + 900
    while pending and time.monotonic() < deadline:
        for role in sorted(pending):
            if not machines.running(role):
                raise RuntimeError(f"{role}: container exited during boot; see {machines.host_dir(role)}/console.log")
            try:
                r = machines.exec_in(role, ["cloud-init", "status"], timeout=20)
            # a busy machine (2 cores, three hosts installing) can take longer than the
            # probe's timeout: ask again, within the deadline
            except (LookupError, OSError, ValueError, subprocess.TimeoutExpired):
                continue
            st = r.stdout.strip().removeprefix("status:").strip()
            if st in ("done", "error", "degraded done"):
                booted[role] = time.monotonic() - t
                pending.discard(role)
                log(f"{role}: cloud-init {st} after {booted[role]:.1f}s")
                if st != "done":
                    detail = machines.sh(
                        role, "cloud-init status --long; tail -n 30 /var/log/cloud-init-output.log"
                    ).stdout
                    raise RuntimeError(f"{role}: cloud-init finished with {st}:\n{detail}")
        time.sleep(1)
    if pending:
        raise TimeoutError(f"cloud-init did not finish on {sorted(pending)} within 900s")
    return booted


def rebuild(role: str) -> dict[str, float]:
    """Lose a host completely, as if its server and disks were gone: its overlay (root
    file system and, in the lab, /var/vmail) is deleted and a fresh one boots with the
    same user-data; then that host's deploy steps run, as `pulumi up` would after a
    replacement. Returns the phase timings."""
    s = config.running_settings()
    ctx = config.context(s, config.load_or_make_secrets(s))
    h = ctx.hosts[role]
    machines.teardown(role)
    t = time.monotonic()
    machines.prepare(
        role,
        rootfs.ensure(),
        h.fqdn,
        cloudinit.user_data(s, h),
        machines.network_config(role, h.private_ip),
        _host_cas(),
        internet.host_root_files(),
    )
    machines.start(role)
    times = {"boot + cloud-init": _wait_cloud_init([role], t)[role]}
    times.update(steps.run_plan(ctx, {st.name for st in deploy.plan(s) if st.host == role}))
    return times


def redeploy(start: str | None = None) -> dict[str, float]:
    """The deploy steps again, on the running lab (from `start` on): a rerun with nothing
    changed must change nothing. The edge firewall is rendered again first, as `pulumi up`
    updates the Hetzner firewall's rules."""
    s = config.running_settings()
    net.edge_up(s, config.addresses(s))
    ctx = config.context(s, config.load_or_make_secrets(s))
    names = [st.name for st in deploy.plan(s)]
    if start is not None and start not in names:
        raise SystemExit(f"no step {start!r}; steps are {', '.join(names)}")
    only = set(names[names.index(start) :]) if start else None
    return steps.run_plan(ctx, only)


def _split_pems(text: str) -> list[str]:
    end = "-----END CERTIFICATE-----"
    return [p.strip() + "\n" + end + "\n" for p in text.split(end) if p.strip()]


def access_text() -> str:
    roles = _roles()
    lines = ["lab is up. From this machine:"]
    for role, port, lp in LOOPBACK:
        if role in roles:
            lines.append(f"  {role}:{port:<4} -> 127.0.0.1:{lp}")
    lines += [
        "  e.g. swaks --server 127.0.0.1:10587 --tls --auth-user alice@example.org ... "
        "(passwords: /run/mailstack-lab/secrets.json, root only)",
        "  openssl s_client -connect 127.0.0.1:10993   (certificate from Pebble)",
        "shell on a host:  .venv/bin/python -m lab shell mx1   (or: nsenter -t <pid> -a bash)",
    ]
    for role in roles:
        try:
            lines.append(f"  {role}: nsenter -t {machines.leader(role)} -a bash   (pid changes on reboot)")
        except (LookupError, OSError, ValueError):
            pass
    lines.append(f"the lab internet (knot, pebble, outside Postfix): ip netns exec {NETNS} bash")
    lines.append("take it down: make lab-down")
    return "\n".join(lines)


def down(quiet: bool = False) -> None:
    """Remove everything a run made, also after an interrupted one; safe to repeat."""
    # Power the hosts off together: each clean shutdown takes up to half a minute.
    from concurrent.futures import ThreadPoolExecutor

    roles = [
        r
        for r in dict.fromkeys(_roles() + ["mx1", "imap", "mx2"])
        if machines.host_dir(r).exists() or (STATE / f"supervisor-{r}.pid").exists()
    ]
    with ThreadPoolExecutor(max_workers=max(1, len(roles))) as pool:
        list(pool.map(machines.teardown, roles))
    outside_mta.stop()
    for name in ("loopback-forwarder", "apt-forwarder", "storage", "pebble", "knot"):
        internet.stop(name)
    aptcache.stop_cache()
    net.down()
    if machines.HOSTS_DIR.exists():
        for d in machines.HOSTS_DIR.iterdir():
            if os.path.ismount(d / "merged"):
                run(["umount", "-l", str(d / "merged")], check=False)
        run(["rm", "-rf", "--one-file-system", str(machines.HOSTS_DIR)], check=False)
    if STATE.exists():
        shutil.rmtree(STATE, ignore_errors=True)
    if not quiet:
        log("lab is down")
