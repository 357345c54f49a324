"""Clients and helpers the scenarios share: SMTP/IMAP sessions into the lab, the outside
MTA's stored copies and its verifier's verdict on them, waiting for delivery."""

from __future__ import annotations

import email
import imaplib
import secrets
import smtplib
import socket
import ssl
from contextlib import contextmanager
from email.message import EmailMessage

from mailstack import hosts as H

from .. import config, internet, machines, net, outside_mta, outside_verifier
from ..netns import inside
from ..util import STATE, wait_until

S = None  # settings, loaded once


def _s():
    global S
    if S is None:
        S = config.running_settings()
    return S


# ------------------------------------------------------------------ clients


def tls_context() -> ssl.SSLContext:
    """Trusts only Pebble's roots: a pass means the host serves its ACME certificate."""
    ctx = ssl.create_default_context(cafile=str(STATE / "tls" / "pebble-roots.pem"))
    return ctx


class LabSMTP(smtplib.SMTP):
    """smtplib that connects to an IP in the lab but verifies TLS against a host name."""

    def __init__(self, name: str, ip: str, port: int, **kw):
        self._ip = ip
        kw.setdefault("source_address", (net.OUTSIDE_V4, 0))
        kw.setdefault("local_hostname", internet.OUTSIDE_MX)
        kw.setdefault("timeout", 30)
        super().__init__(name, port, **kw)

    def _get_socket(self, host, port, timeout):
        return socket.create_connection((self._ip, port), timeout, self.source_address)


class LabSMTPS(LabSMTP):
    def _get_socket(self, host, port, timeout):
        raw = socket.create_connection((self._ip, port), timeout, self.source_address)
        return tls_context().wrap_socket(raw, server_hostname=host)


class LabIMAP(imaplib.IMAP4_SSL):
    def __init__(self, name: str, ip: str):
        self._ip = ip
        super().__init__(name, 993, ssl_context=tls_context(), timeout=30)

    def _create_socket(self, timeout):
        raw = socket.create_connection((self._ip, self.port), timeout)
        return self.ssl_context.wrap_socket(raw, server_hostname=self.host)


def _host_ip(role: str) -> str:
    return net.public_v4(role)


def _imap_role() -> str:
    return "imap" if "imap" in machines_roles() else "mx1"


def machines_roles() -> list[str]:
    return list(H.hosts(_s()))


def message(frm: str, to: str, token: str, body: str = "hello from the lab\n") -> EmailMessage:
    m = EmailMessage()
    m["From"], m["To"], m["Subject"] = frm, to, f"lab {token}"
    m["Message-ID"] = f"<{token}@{frm.split('@')[1]}>"
    m["Date"] = email.utils.formatdate()
    m.set_content(body)
    return m


def inbound(to: str, token: str, role: str = "mx1", body: str = "hello\n") -> None:
    s = _s()
    with inside():
        with LabSMTP(s.fqdn(role), _host_ip(role), 25) as c:
            c.starttls(context=tls_context())
            c.ehlo()
            c.send_message(message(f"sender@{internet.OUTSIDE_DOMAIN}", to, token, body))


def via_outside(to: str, token: str, body: str = "hello\n") -> None:
    """Inbound as the internet sends it: the outside Postfix takes the message and
    delivers it by MX look-up (mx1 at 10, mx2 at 20), queueing and retrying on its own."""
    outside_mta.submit(message(f"sender@{internet.OUTSIDE_DOMAIN}", to, token, body), to)


@contextmanager
def imap_session(address: str):
    """A logged-in IMAPS session on imap; raises imaplib.IMAP4.error if the login fails."""
    with inside():
        c = LabIMAP(_s().fqdn("imap"), _host_ip(_imap_role()))
        try:
            c.login(address, config.password(address))
            yield c
        finally:
            try:
                c.logout()
            except Exception:
                pass


def _imap_login_ok(address: str) -> bool:
    try:
        with imap_session(address):
            return True
    except imaplib.IMAP4.error:
        return False


def imap_count(address: str, token: str, mailbox: str = "INBOX") -> int:
    with imap_session(address) as c:
        typ, _ = c.select(f'"{mailbox}"', readonly=True)
        if typ != "OK":
            return 0
        typ, data = c.search(None, "SUBJECT", f'"{token}"')
        return len(data[0].split()) if typ == "OK" and data[0] else 0


def wait_imap(address: str, token: str, mailbox: str = "INBOX", timeout: float = 60) -> None:
    wait_until(lambda: imap_count(address, token, mailbox) > 0, timeout, f"message {token} in {address}'s {mailbox}")


def outside_messages(token: str) -> list[bytes]:
    return [p.read_bytes() for p in sorted(outside_mta.spool().glob("*.eml")) if token.encode() in p.read_bytes()]


def outside_verdict(raw: bytes) -> dict[str, str]:
    """The outside MTA's verdict on a copy it stored: {'spf': ..., 'dkim': ..., 'dmarc': ...}
    as its OpenDKIM and OpenDMARC recorded them on arrival (lab/outside_verifier.py)."""
    return outside_verifier.verdict(raw, outside_mta.HOSTNAME)


def outside_copy(token: str, timeout: float = 60) -> bytes:
    """The one copy the outside MTA stored with `token` in it (waits for it)."""
    wait_until(lambda: outside_messages(token), timeout, f"the outside MTA to receive {token}")
    found = outside_messages(token)
    _expect(len(found) == 1, f"{token}: {len(found)} copies at the outside MTA, not 1")
    return found[0]


def _port_open(ip: str, port: int, timeout: float = 2, source: str = net.OUTSIDE_V4) -> bool:
    with inside():
        try:
            with socket.create_connection((ip, port), timeout, (source, 0)):
                return True
        except OSError:
            return False


def _host_can_connect(role: str, ip: str, port: int) -> bool:
    r = machines.sh(role, f"timeout 3 bash -c 'exec 3<>/dev/tcp/{ip}/{port}'", timeout=20)
    return r.returncode == 0


def _expect(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def _token() -> str:
    return "t" + secrets.token_hex(6)


# ------------------------------------------------------------------ scenarios

TEAM = "team@example.net"  # the example stack's alias with three members
FORWARD = "family@example.org"  # lab/stack.yaml: a user and an address at the outside MTA


SUBADDRESS = "alice+lab@example.org"  # alice's mailbox, through the sub-address


def copies(address: str) -> tuple[list[str], list[str]]:
    """Where mail to a user or alias lands, from the running settings: (our mailboxes,
    outside addresses). A sub-address lands where its base address does."""
    s = _s()
    local, domain = address.rsplit("@", 1)
    address = f"{local.split(H.SUBADDRESS_DELIMITER, 1)[0]}@{domain}"
    to = next((a.to for a in s.all_aliases if a.address == address), (address,))
    ours = [m for m in to if m.rsplit("@", 1)[1] in s.domains]
    return ours, [m for m in to if m not in ours]


def wait_delivered(address: str, token: str, timeout: float = 60) -> None:
    ours, outside = copies(address)
    for who in ours:
        wait_imap(who, token, timeout=timeout)
    for who in outside:
        wait_until(lambda: outside_messages(token), timeout, f"{address}'s copy for {who}")


# ------------------------------------------------------------------ the outside verifier


def _header_fields(raw: bytes) -> tuple[list[bytes], bytes]:
    """A stored copy's header fields (each with its continuation lines) and its body."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    return fields, body


def as_sent(raw: bytes) -> bytes:
    """A stored copy as our stack sent it: without the outside MTA's X-Lab-* envelope, its
    verifier's Authentication-Results and its own Received header (the topmost)."""
    fields, body = _header_fields(raw)
    ours = outside_mta.HOSTNAME.encode()
    fields = [
        f
        for f in fields
        if not f.startswith(b"X-Lab-")
        and not (f.lower().startswith(b"authentication-results:") and ours in f.split(b";")[0])
    ]
    if fields and fields[0].startswith(b"Received:"):
        fields = fields[1:]
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


def resend_to_outside(message: bytes, sender: str, rcpt: str) -> dict[str, str]:
    """Hand `message` to the outside MTA's public listener from the lab's internet host
    (as any other server would), and return its verifier's verdict on the stored copy."""
    with inside():
        with smtplib.SMTP(
            net.OUTSIDE_V4,
            25,
            local_hostname=internet.NS_NAME.rstrip("."),
            source_address=(net.INTERNET_V4, 0),
            timeout=30,
        ) as c:
            c.sendmail(sender, [rcpt], message)

    def stored():
        return [
            p.read_bytes()
            for p in sorted(outside_mta.spool().glob("*.eml"))
            if f"X-Lab-Rcpt-To: {rcpt}\r\n".encode() in p.read_bytes()
        ]

    wait_until(stored, 30, f"the outside MTA to store the copy for {rcpt}")
    return outside_verdict(stored()[-1])


def verifier_bites(raw: bytes, sender: str) -> str:
    """The outside verifier judges for real: the copy our stack sent (`raw`, as stored),
    handed to it again untouched, still has dkim=pass; with one byte of its body changed
    it has dkim=fail (and so dmarc=fail: SPF can't pass from the internet host either)."""
    msg = as_sent(raw)
    token = _token()
    intact = resend_to_outside(msg, sender, f"intact-{token}@{internet.OUTSIDE_DOMAIN}")
    _expect(intact["dkim"] == "pass", f"the untouched copy, sent again: {intact}")
    tampered = resend_to_outside(
        msg.replace(b"hello", b"jello", 1), sender, f"tampered-{token}@{internet.OUTSIDE_DOMAIN}"
    )
    _expect(
        tampered["dkim"] == "fail" and tampered["dmarc"] == "fail",
        f"a copy with a changed body: {tampered}, not dkim=fail dmarc=fail",
    )
    return f"untouched copy dkim={intact['dkim']}, changed body dkim={tampered['dkim']} dmarc={tampered['dmarc']}"
