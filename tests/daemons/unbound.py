"""unbound in the server namespace: the resolver of the daemons there, with the outside
clients' reverse and forward names (FCrDNS, dial-up names, SenderScore answers)."""

from __future__ import annotations

from pathlib import Path

from lab import dns_root

# The outside clients (client namespace addresses) and what DNS says about them.
OUTSIDE_OK = "10.99.0.5"  # PTR good.test, and good.test A points back
OUTSIDE_NO_PTR = "10.99.0.6"
OUTSIDE_DYN = "10.99.0.8"  # PTR and A match, but the name is a dial-up pool's
OUTSIDE_LIAR = "10.99.0.7"  # PTR liar.test, whose A is another address (no FCrDNS)
OUTSIDE_LOW = "10.99.0.10"  # FCrDNS fine, SenderScore 5: below -blockBelow 10
OUTSIDE_MEH = "10.99.0.11"  # FCrDNS fine, SenderScore 65: below -junkBelow 70
SINK = "10.99.0.12"  # elsewhere.test's MX: records what our smtpd sends out

TEST_CONF = """server:
  interface: 127.0.0.53
  do-daemonize: no
  username: ""
  chroot: ""
  pidfile: ""
  use-syslog: no
  directory: "{root}"
  module-config: "iterator"
  access-control: 127.0.0.0/8 allow
  access-control: 10.0.0.0/8 allow
  local-zone: "test." static
  local-data: "good.test. A {ok}"
  local-data-ptr: "{ok} good.test"
  local-data: "dyn-10-99-0-8.pool.isp.test. A {dyn}"
  local-data-ptr: "{dyn} dyn-10-99-0-8.pool.isp.test"
  local-data: "liar.test. A 10.99.0.77"
  local-data-ptr: "{liar} liar.test"
  local-data: "low.test. A {low}"
  local-data-ptr: "{low} low.test"
  local-data: "meh.test. A {meh}"
  local-data-ptr: "{meh} meh.test"
  local-data: "elsewhere.test. MX 10 sink.test."
  local-data: "sink.test. A {sink}"
  local-zone: "10.in-addr.arpa." static
  # filter-senderscore asks <reversed ip>.score.senderscore.com; the last octet of the
  # answer is the score. No answer is a neutral one.
  local-zone: "senderscore.com." static
  local-data: "{low_rev}.score.senderscore.com. A 127.0.4.5"
  local-data: "{meh_rev}.score.senderscore.com. A 127.0.4.65"
"""


def _rev(ip: str) -> str:
    return ".".join(reversed(ip.split(".")))


def start(ns, root: Path, extra_dns: str = ""):
    """unbound on 127.0.0.53 with TEST_CONF + extra_dns; the caller waits for port 53."""
    (root / "unbound.conf").write_text(
        TEST_CONF.format(
            root=root,
            ok=OUTSIDE_OK,
            dyn=OUTSIDE_DYN,
            liar=OUTSIDE_LIAR,
            low=OUTSIDE_LOW,
            meh=OUTSIDE_MEH,
            sink=SINK,
            low_rev=_rev(OUTSIDE_LOW),
            meh_rev=_rev(OUTSIDE_MEH),
        )
        + extra_dns
    )
    return ns.start("unbound", "-d", "-c", root / "unbound.conf", log=root / "unbound.log")


# Debian's unbound.conf and its drop-ins, as the hosts have them (paths moved into the
# test's directory): the RFC 5011 anchor for "." of root-auto-trust-anchor-file.conf, the
# control socket of remote-control.conf, then the drop-ins (the lab root's, mailstack's).
DEBIAN_LAYOUT = """server:
  chroot: ""
  username: ""
  directory: "{root}"
  pidfile: "{root}/unbound.pid"
  use-syslog: no
  logfile: ""
  auto-trust-anchor-file: "{root}/root.key"
remote-control:
  control-enable: yes
  control-interface: {root}/unbound.ctl
include: "{root}/lab-root.conf"
include: "{root}/mailstack.conf"
"""


def start_rendered(ns, root: Path, rendered: str, hints: str, anchor: str):
    """The rendered mailstack.conf (on 127.0.0.1:53 of ns's server namespace) in Debian's
    layout, priming from hints and validating with anchor as the root's key; waits until
    it listens."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "mailstack.conf").write_text(rendered)
    (root / "hints").write_text(hints)
    (root / "lab-root.conf").write_text(dns_root.unbound_conf(str(root / "hints")))
    (root / "root.key").write_text(anchor)
    (root / "unbound.conf").write_text(DEBIAN_LAYOUT.format(root=root))
    proc = ns.start("unbound", "-d", "-c", root / "unbound.conf", log=root / "unbound.log")
    ns.wait_port("127.0.0.1", 53, proc, root / "unbound.log")
    return proc
