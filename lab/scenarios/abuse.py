"""The abuse scenarios (docs/hardening.md): password guessing gets the guesser banned by
fail2ban on the real hosts, while everybody else keeps logging in."""

from __future__ import annotations

import imaplib
import smtplib
import socket
from concurrent.futures import ThreadPoolExecutor

from .. import config, machines, net
from ..netns import inside
from ..util import wait_until
from .clients import LabSMTP, _expect, _host_ip, _imap_role, _s, machines_roles, tls_context

ROUNDS = 12  # failed logins per service: above the default loginFailures (10)
BAN_TAKES_EFFECT = 10  # seconds from fail2ban listing an address to its nftables rule


def _connects(ip: str, port: int, src: str) -> bool:
    with inside():
        try:
            with socket.create_connection((ip, port), 3, (src, 0)):
                return True
        except OSError:
            return False


def _closes(ip: str, port: int, src: str) -> None:
    """A banned address loses the port within BAN_TAKES_EFFECT seconds. fail2ban lists the
    address as banned (`get <jail> banip`) before its nftables action has run, the first
    ban of a jail also creating the action's table, so a probe at once can still get in."""
    wait_until(lambda: not _connects(ip, port, src), BAN_TAKES_EFFECT, f"the ban of {src} to close {ip} port {port}")


def _smtp_login(src: str, password: str) -> int:
    with inside():
        c = LabSMTP(_s().fqdn("smtp"), _host_ip("mx1"), 587, source_address=(src, 0))
        with c:
            c.starttls(context=tls_context())
            c.ehlo()
            try:
                return c.login("alice@example.org", password)[0]
            except smtplib.SMTPAuthenticationError as e:
                return e.smtp_code


def _imap_login(ip: str, src: str, password: str) -> str:
    class C(imaplib.IMAP4_SSL):
        def _create_socket(self, timeout):
            raw = socket.create_connection((ip, 993), timeout, (src, 0))
            return self.ssl_context.wrap_socket(raw, server_hostname=self.host)

    with inside():
        with C(_s().fqdn("imap"), 993, ssl_context=tls_context(), timeout=30) as c:
            try:
                return c.login("alice@example.org", password)[0]
            except imaplib.IMAP4.error:
                return "NO"


def _banned(role: str, jail: str) -> str:
    return machines.sh(role, f"fail2ban-client get {jail} banip", timeout=30).stdout


def s_brute_force() -> str:
    """(12) failed logins from one address (SMTP AUTH over IPv4, IMAP over IPv6) get it
    banned by fail2ban; a good login from elsewhere still works; bans are lifted after."""
    pw = config.password("alice@example.org")
    imap_role = _imap_role()
    imap_v6 = net.public_v6(imap_role)
    notes = []
    try:
        for _ in range(ROUNDS):
            if not _connects(_host_ip("mx1"), 587, net.ATTACK_V4):
                break
            try:
                _smtp_login(net.ATTACK_V4, "wrong")
            except (smtplib.SMTPException, OSError):
                break  # banned while the session ran
        wait_until(
            lambda: net.ATTACK_V4 in _banned("mx1", "mailstack-smtpd"), 30, "fail2ban on mx1 to ban the SMTP guesser"
        )
        _closes(_host_ip("mx1"), 587, net.ATTACK_V4)
        _closes(_host_ip("mx1"), 465, net.ATTACK_V4)
        _expect(_connects(_host_ip("mx1"), 25, net.ATTACK_V4), "a banned address lost port 25 too")
        _expect(_smtp_login(net.OUTSIDE_V4, pw) == 235, "a good login from elsewhere fails on 587")
        notes.append(f"{net.ATTACK_V4} banned on 465/587 (25 still open), alice logs in from {net.OUTSIDE_V4}")

        # Side by side: Dovecot makes each failure from one address wait longer (up to
        # 15 s), which is the "slowed" half of the defence.
        def guess(_):
            try:
                return _imap_login(imap_v6, net.ATTACK_V6, "wrong")
            except (OSError, imaplib.IMAP4.abort) as e:
                return repr(e)

        with ThreadPoolExecutor(ROUNDS) as pool:
            list(pool.map(guess, range(ROUNDS)))
        wait_until(
            lambda: net.ATTACK_V6 in _banned(imap_role, "mailstack-dovecot"),
            30,
            f"fail2ban on {imap_role} to ban the IMAP guesser",
        )
        _closes(imap_v6, 993, net.ATTACK_V6)
        _closes(imap_v6, 4190, net.ATTACK_V6)
        _expect(_imap_login(imap_v6, net.OUTSIDE_V6, pw) == "OK", "a good IMAP login from elsewhere fails")
        notes.append(f"{net.ATTACK_V6} banned on 993/4190, alice logs in over IPv6 from {net.OUTSIDE_V6}")
    finally:
        for role in machines_roles():
            machines.sh(role, "command -v fail2ban-client >/dev/null && fail2ban-client unban --all", timeout=30)
    return "; ".join(notes)
