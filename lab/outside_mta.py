"""The outside world's MTA (mx.outside.example.com): Debian's Postfix, as any peer on the
internet would run it, on the lab's outside address.

- It receives the mail the stack sends out, for outside.example.com only (anything else
  is refused: "Relay access denied"), and hands each copy to a pipe that stores it with its
  envelope (X-Lab-* headers) in the spool the scenarios read.
- It sends the scenarios' inbound mail the way the internet does: a client on the lab
  namespace's loopback submits to it, and it looks up example.org's MX at the lab DNS
  (knot), tries MX 10 and then MX 20, and queues and retries on its own (timers shortened
  for the lab).

- It judges what it receives from the stack as a receiving site does: OpenDKIM and
  OpenDMARC (with its own SPF check) as Postfix milters on the public listener, their
  verdict recorded in each stored copy (lab/outside_verifier.py, `verdict()`).

Postfix can't be installed on this machine beside OpenSMTPD (both are Debian's
`mail-transport-agent`, which conflict), so it runs from a root file system of its own:
the lab's host image plus a cached layer with the postfix, opendkim and opendmarc
packages, mounted as an overlay and entered with chroot inside the lab namespace. It is
no stack host: no systemd, only Postfix's master and its children and the two milters.
"""

from __future__ import annotations

import hashlib
import shutil
import smtplib
import socket
import time
from email.message import EmailMessage
from pathlib import Path

from . import machines, net, outside_verifier, rootfs
from .util import CACHE, NETNS, cache_lock, log, run, wait_until

ROLE = "outside"  # its directory beside the hosts' (cleaned by `lab down`)
SPOOL_IN_ROOT = "/var/lib/outside-mail"
SUBMIT_PORT = 25  # on 127.0.0.1 in the lab namespace: mynetworks may relay
DOMAIN = "outside.example.com"
HOSTNAME = f"mx.{DOMAIN}"
# Retries as a real MTA does them, only faster: a message mx1 and mx2 both defer is tried
# again after 5 s, then at most every 15 s (Postfix's defaults: 300 s and 4000 s).
QUEUE_RUN_DELAY = 5
MIN_BACKOFF = 5
MAX_BACKOFF = 15
CONNECT_TIMEOUT = 5  # a powered-off MX 10 costs this much before MX 20

LAYER_PACKAGES = ("postfix", *outside_verifier.PACKAGES)
LAYER_RECIPE = (LAYER_PACKAGES, 2)
PRESEED = "postfix postfix/main_mailer_type select No configuration\n"


def root() -> Path:
    return machines.merged(ROLE)


def spool() -> Path:
    """Where the stored copies are, as seen from this machine."""
    return root() / SPOOL_IN_ROOT.lstrip("/")


def _layer_path() -> Path:
    key = hashlib.sha256(repr((rootfs.recipe_key(), LAYER_RECIPE, PRESEED)).encode()).hexdigest()[:12]
    return CACHE / f"outside-mta-{key}"


def ensure_layer(base: Path) -> Path:
    """Postfix and the verifier's packages installed over the host image, cached like the
    image itself."""
    dest = _layer_path()
    if (dest / ".mailstack-lab-complete").exists():
        return dest
    with cache_lock("outside-mta"):
        if (dest / ".mailstack-lab-complete").exists():
            return dest
        return _build_layer(base, dest)


def _build_layer(base: Path, dest: Path) -> Path:
    t0 = time.monotonic()
    tmp = CACHE / f"{dest.name}-build"
    if tmp.exists():
        run(["umount", "-l", str(tmp / "merged")], check=False, capture=True)
        shutil.rmtree(tmp)
    for sub in ("upper", "work", "merged"):
        (tmp / sub).mkdir(parents=True)
    m = tmp / "merged"
    run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={base},upperdir={tmp / 'upper'},workdir={tmp / 'work'}",
            str(m),
        ]
    )
    try:
        with rootfs.no_daemons(m):
            run(["chroot", str(m), "debconf-set-selections"], input=PRESEED, capture=True)
            rootfs.apt_install(m, LAYER_PACKAGES)
            run(["chroot", str(m), "bash", "-c", "apt-get clean; rm -rf /var/lib/apt/lists/*"])
    finally:
        run(["umount", str(m)])
    (tmp / "upper" / ".mailstack-lab-complete").write_text(dest.name + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    (tmp / "upper").rename(dest)
    shutil.rmtree(tmp, ignore_errors=True)
    log(f"outside MTA layer ({', '.join(LAYER_PACKAGES)}) built in {time.monotonic() - t0:.0f}s")
    return dest


def main_cf(pebble_roots: str) -> str:
    return "\n".join(
        [
            "# The lab's outside MTA (lab/outside_mta.py).",
            "compatibility_level = 3.6",
            f"myhostname = {HOSTNAME}",
            f"mydomain = {DOMAIN}",
            "myorigin = $mydomain",
            "mydestination =",
            "local_recipient_maps =",
            "alias_maps =",
            "alias_database =",
            f"inet_interfaces = {net.OUTSIDE_V4}, {net.OUTSIDE_V6}, 127.0.0.1",
            "inet_protocols = all",
            # Loopback (the scenarios) may send anywhere; everyone else only to our domain.
            "mynetworks = 127.0.0.0/8",
            f"relay_domains = {DOMAIN}",
            f"transport_maps = inline:{{ {DOMAIN}=labstore: }}",
            "labstore_destination_recipient_limit = 1",
            "smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
            # Connections out leave from the outside address (its PTR and SPF say so).
            f"smtp_bind_address = {net.OUTSIDE_V4}",
            f"smtp_bind_address6 = {net.OUTSIDE_V6}",
            "smtp_address_preference = ipv4",
            f"smtp_connect_timeout = {CONNECT_TIMEOUT}s",
            "smtp_tls_security_level = may",
            f"smtp_tls_CAfile = {pebble_roots}",
            "smtp_tls_loglevel = 1",
            "smtpd_tls_security_level = may",
            "smtpd_tls_cert_file = /etc/postfix/tls/outside.pem",
            "smtpd_tls_key_file = /etc/postfix/tls/outside.key",
            "smtpd_tls_received_header = yes",
            "smtpd_tls_loglevel = 1",
            f"queue_run_delay = {QUEUE_RUN_DELAY}s",
            f"minimal_backoff_time = {MIN_BACKOFF}s",
            f"maximal_backoff_time = {MAX_BACKOFF}s",
            "maximal_queue_lifetime = 1h",
            "bounce_queue_lifetime = 1h",
            "smtputf8_enable = no",
            "biff = no",
            # No syslog in the chroot: postlogd writes the log file.
            "maillog_file = /var/log/postfix.log",
            # The verifier's milters (master.cf puts them on the public listeners only). A
            # message they can't judge is deferred, never stored without a verdict.
            f"lab_verify_milters = {outside_verifier.MILTERS}",
            "milter_default_action = tempfail",
            "",
        ]
    )


MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
# The scenarios' own submissions (loopback) go out unjudged; what arrives from the lab's
# internet (our stack's outbound mail) passes OpenDKIM and OpenDMARC.
127.0.0.1:smtp inet n   -       n       -       -       smtpd
OUTSIDE_V4:smtp inet n -      n       -       -       smtpd
  -o smtpd_milters=$lab_verify_milters
[OUTSIDE_V6]:smtp inet n -    n       -       -       smtpd
  -o smtpd_milters=$lab_verify_milters
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
labstore  unix  -       n       n       -       -       pipe
  user=nobody argv=/usr/local/bin/lab-outside-store ${sender} ${client_address} ${recipient}
"""

# Stores one copy per recipient with its envelope on top, CRLF as on the wire.
STORE_SCRIPT = f"""#!/usr/bin/python3
import os, re, sys, time
sender, peer, rcpt = sys.argv[1:4]
data = sys.stdin.buffer.read().replace(b"\\r\\n", b"\\n").replace(b"\\n", b"\\r\\n")
first_received = re.search(rb"^Received:.*?(?=\\r\\n\\S)", data, re.M | re.S)
tls = b"using TLS" in first_received.group(0) if first_received else False
head = (f"X-Lab-Mail-From: {{sender}}\\r\\nX-Lab-Rcpt-To: {{rcpt}}\\r\\n"
        f"X-Lab-Peer: {{peer}}\\r\\nX-Lab-TLS: {{'yes' if tls else 'no'}}\\r\\n").encode()
name = f"{{time.time():.6f}}-{{os.getpid()}}"
tmp = os.path.join("{SPOOL_IN_ROOT}", "." + name + ".tmp")
with open(tmp, "wb") as f:
    f.write(head + data)
os.rename(tmp, os.path.join("{SPOOL_IN_ROOT}", name + ".eml"))
"""


def _postfix(*args: str, check: bool = True):
    return run(["ip", "netns", "exec", NETNS, "chroot", str(root()), "postfix", *args], check=check, capture=True)


def start(base: Path, tlsdir: Path, pebble_roots_pem: str) -> None:
    layer = ensure_layer(base)
    d = machines.host_dir(ROLE)
    for sub in ("upper", "work", "merged"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    m = root()
    if not m.is_mount():
        run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={layer}:{base},upperdir={d / 'upper'},workdir={d / 'work'}",
                str(m),
            ]
        )
    etc = m / "etc/postfix"
    (etc / "tls").mkdir(parents=True, exist_ok=True)
    for f in ("outside.pem", "outside.key"):
        shutil.copyfile(tlsdir / f, etc / "tls" / f)
    (etc / "tls" / "outside.key").chmod(0o600)
    (etc / "tls" / "pebble-roots.pem").write_text(pebble_roots_pem)
    (etc / "main.cf").write_text(main_cf("/etc/postfix/tls/pebble-roots.pem"))
    (etc / "master.cf").write_text(
        MASTER_CF.replace("OUTSIDE_V4", net.OUTSIDE_V4).replace("OUTSIDE_V6", net.OUTSIDE_V6)
    )
    store = m / "usr/local/bin/lab-outside-store"
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(STORE_SCRIPT)
    store.chmod(0o755)
    sp = spool()
    sp.mkdir(parents=True, exist_ok=True)
    (m / "etc/resolv.conf").unlink(missing_ok=True)
    (m / "etc/resolv.conf").write_text(f"nameserver {net.INTERNET_V4}\n")
    (m / "etc/mailname").write_text(DOMAIN + "\n")
    # Inside the chroot, nobody is the image's nobody (65534 on both).
    run(["chroot", str(m), "chown", "nobody:nogroup", SPOOL_IN_ROOT])
    outside_verifier.start(m, HOSTNAME)
    _postfix("check")
    _postfix("start")

    def up():
        from .netns import inside

        with inside():
            with socket.create_connection((net.OUTSIDE_V4, 25), timeout=1):
                return True

    wait_until(up, 20, "the outside Postfix")
    log(f"outside MTA (Postfix) {HOSTNAME} on {net.OUTSIDE_V4}:25")


def stop() -> None:
    if root().is_mount():
        _postfix("stop", check=False)
        outside_verifier.stop(root())


def submit(msg: EmailMessage, to: str | list[str], sender: str | None = None) -> None:
    """Hand a message to the outside Postfix, which delivers it by MX look-up."""
    from .netns import inside

    with inside():
        with smtplib.SMTP("127.0.0.1", SUBMIT_PORT, local_hostname="client.outside.example.com", timeout=30) as c:
            c.send_message(msg, from_addr=sender, to_addrs=[to] if isinstance(to, str) else to)


def queue() -> str:
    """Postfix's queue as `postqueue -p` shows it ("Mail queue is empty" when empty)."""
    r = run(["ip", "netns", "exec", NETNS, "chroot", str(root()), "postqueue", "-p"], capture=True, check=False)
    return r.stdout


def queue_empty() -> bool:
    return "Mail queue is empty" in queue()


def log_text() -> str:
    try:
        return (root() / "var/log/postfix.log").read_text(errors="replace")
    except OSError:
        return ""
