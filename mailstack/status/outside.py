"""Probes from the operator's side: DNS look-ups, TCP connects, TLS handshakes, SMTP,
ManageSieve and HTTPS sessions. Every network call has a timeout; the results are plain
data for decide.py."""
from __future__ import annotations

import datetime
import socket
import ssl
from dataclasses import dataclass

import dns.exception
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.resolver
import dns.reversename

from .expect import Environment

TIMEOUT = 8.0
PORT_TIMEOUT = 2.0


# ------------------------------------------------------------------ DNS

def resolver(env: Environment) -> dns.resolver.Resolver:
    if env.resolver:
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [env.resolver]
    else:
        r = dns.resolver.Resolver()
    r.lifetime = TIMEOUT
    r.cache = None
    return r


def normalise(rtype: str, rd) -> str:
    """One comparable text per rdata: TXT as its concatenated text (the split into
    character-strings is the DNS host's business), the rest in canonical lower case."""
    if rtype == "TXT":
        return b"".join(rd.strings).decode(errors="replace")
    return rd.to_text().lower()


def parse_values(rtype: str, values) -> set[str]:
    return {normalise(rtype, dns.rdata.from_text(dns.rdataclass.IN, dns.rdatatype.from_text(rtype), v))
            for v in values}


def lookup(env: Environment, name: str, rtype: str) -> tuple[set[str] | None, str | None]:
    """(normalised values, error). NXDOMAIN / no data is an empty set, not an error."""
    r = resolver(env)
    with env.vantage():
        try:
            ans = r.resolve(name, rtype, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return set(), None
        except (dns.exception.DNSException, OSError) as exc:
            return None, f"{type(exc).__name__}: {exc}"[:160]
    if ans.rrset is None:
        return set(), None
    return {normalise(rtype, rd) for rd in ans.rrset}, None


def reverse(ip: str) -> str:
    return dns.reversename.from_address(ip).to_text()


# ------------------------------------------------------------------ sockets

def _connect(env: Environment, ip: str, port: int, timeout: float) -> socket.socket:
    v6 = ":" in ip
    src = env.source_v6 if v6 else env.source_v4
    with env.vantage():
        return socket.create_connection((ip, port), timeout, (src, 0) if src else None)


def port_open(env: Environment, ip: str, port: int) -> bool:
    try:
        _connect(env, ip, port, PORT_TIMEOUT).close()
        return True
    except OSError:
        return False


def _tls_context(env: Environment, verify: bool) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=env.cafile) if env.cafile else ssl.create_default_context()


class Lines:
    """Line-oriented reader/writer on a socket (SMTP, ManageSieve)."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.f = sock.makefile("rb")

    def line(self) -> str:
        data = self.f.readline(8192)
        if not data:
            raise ConnectionError("connection closed")
        return data.decode(errors="replace").rstrip("\r\n")

    def send(self, text: str) -> None:
        self.sock.sendall(text.encode() + b"\r\n")

    def smtp_reply(self) -> tuple[int, list[str]]:
        lines = []
        while True:
            ln = self.line()
            lines.append(ln[4:])
            if len(ln) < 4 or ln[3] != "-":
                return int(ln[:3]), lines

    def sieve_until_ok(self) -> list[str]:
        out = []
        for _ in range(100):
            ln = self.line()
            if ln.startswith("OK"):
                return out
            if ln.startswith(("NO", "BYE")):
                raise ConnectionError(ln)
            out.append(ln)
        raise ConnectionError("no OK from ManageSieve")


@dataclass
class TlsResult:
    days_left: float | None = None
    names: tuple[str, ...] = ()
    verify_error: str | None = None


def _cert_info(der: bytes) -> tuple[float, tuple[str, ...]]:
    from cryptography import x509
    cert = x509.load_der_x509_certificate(der)
    left = (cert.not_valid_after_utc - datetime.datetime.now(datetime.timezone.utc)).total_seconds() / 86400
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = tuple(san.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        names = ()
    return left, names


def _handshake(env: Environment, ip: str, port: int, sni: str, verify: bool) -> ssl.SSLSocket:
    """Connect, speak the port's plain-text prelude if any, and do the TLS handshake."""
    sock = _connect(env, ip, port, TIMEOUT)
    sock.settimeout(TIMEOUT)
    try:
        if port in (25, 587):
            c = Lines(sock)
            c.smtp_reply()
            c.send(f"EHLO {env.helo}")
            c.smtp_reply()
            c.send("STARTTLS")
            code, _ = c.smtp_reply()
            if code != 220:
                raise ConnectionError(f"STARTTLS answered {code}")
        elif port == 4190:
            c = Lines(sock)
            c.sieve_until_ok()
            c.send("STARTTLS")
            c.sieve_until_ok()
        return _tls_context(env, verify).wrap_socket(sock, server_hostname=sni)
    except BaseException:
        sock.close()
        raise


def certificate(env: Environment, ip: str, port: int, sni: str) -> TlsResult:
    try:
        with _handshake(env, ip, port, sni, verify=True) as s:
            left, names = _cert_info(s.getpeercert(binary_form=True))
            return TlsResult(left, names)
    except ssl.SSLCertVerificationError as exc:
        err = exc.verify_message or str(exc)
    except (OSError, ConnectionError, ValueError) as exc:
        return TlsResult(verify_error=f"{type(exc).__name__}: {exc}"[:160])
    try:   # not trusted: look at it anyway, for the report
        with _handshake(env, ip, port, sni, verify=False) as s:
            left, names = _cert_info(s.getpeercert(binary_form=True))
            return TlsResult(left, names, err)
    except (OSError, ConnectionError, ValueError) as exc:
        return TlsResult(verify_error=f"{err}; {exc}"[:160])


# ------------------------------------------------------------------ SMTP

@dataclass
class SmtpResult:
    banner: str | None = None
    features: list[str] | None = None
    tls_ok: bool = False
    auth_after_tls: bool | None = None
    relay_reply: int | None = None
    error: str | None = None


def smtp(env: Environment, ip: str, port: int, sni: str, relay_probe: str | None = None) -> SmtpResult:
    """Greeting, EHLO before TLS, STARTTLS, EHLO after it; on 25 a relay attempt first."""
    res = SmtpResult()
    try:
        sock = _connect(env, ip, port, TIMEOUT)
    except OSError as exc:
        res.error = f"connect: {exc}"
        return res
    try:
        sock.settimeout(TIMEOUT)
        c = Lines(sock)
        code, lines = c.smtp_reply()
        res.banner = f"{code} {lines[0]}" if lines else str(code)
        c.send(f"EHLO {env.helo}")
        code, feats = c.smtp_reply()
        res.features = feats[1:] if code == 250 else []
        if relay_probe:
            c.send(f"MAIL FROM:<status-probe@{env.helo}>")
            code, _ = c.smtp_reply()
            if code < 400:
                c.send(f"RCPT TO:<{relay_probe}>")
                res.relay_reply, _ = c.smtp_reply()
            else:
                res.relay_reply = code
            c.send("RSET")
            c.smtp_reply()
        if any(f.upper().startswith("STARTTLS") for f in res.features):
            c.send("STARTTLS")
            code, _ = c.smtp_reply()
            if code == 220:
                ts = _tls_context(env, verify=False).wrap_socket(sock, server_hostname=sni)
                res.tls_ok = True
                c2 = Lines(ts)
                c2.send(f"EHLO {env.helo}")
                code, feats2 = c2.smtp_reply()
                res.auth_after_tls = any(f.upper().startswith("AUTH") for f in feats2[1:])
                c2.send("QUIT")
                ts.close()
                return res
        c.send("QUIT")
    except (OSError, ConnectionError, ValueError) as exc:
        res.error = f"{type(exc).__name__}: {exc}"[:160]
    finally:
        sock.close()
    return res


def smtps_banner(env: Environment, ip: str, port: int, sni: str) -> tuple[str | None, str | None]:
    try:
        with _handshake(env, ip, port, sni, verify=False) as s:
            s.settimeout(TIMEOUT)
            code, lines = Lines(s).smtp_reply()
            return f"{code} {lines[0] if lines else ''}", None
    except (OSError, ConnectionError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:160]


# ------------------------------------------------------------------ HTTPS

def https_get(env: Environment, ip: str, name: str, path: str) -> tuple[int | None, str | None, str | None]:
    """(status, body, error) of GET https://name/path, connecting to ip."""
    try:
        with _handshake(env, ip, 443, name, verify=True) as s:
            s.settimeout(TIMEOUT)
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n"
                      f"User-Agent: mailstack-status\r\n\r\n".encode())
            data = b""
            while len(data) < 1 << 20:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, ConnectionError, ValueError) as exc:
        return None, None, f"{type(exc).__name__}: {exc}"[:160]
    head, _, body = data.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None, None, "not an HTTP answer"
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, body.decode(errors="replace"), None


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return out
