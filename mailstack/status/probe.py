"""Socket-level probes, the one home for them: TCP connects, TLS handshakes with the
certificate's names and expiry, SMTP sessions (STARTTLS, AUTH before and after TLS, the
open-relay attempt), the SMTPS greeting and an HTTPS GET.

Standard library only: the operator's side (outside.py wraps these with its vantage
point, trust store and source addresses) and the MX hosts looking at each other
(collect.py, which `inside.program` and the daily job ship with this file) run the
very same code. Every network call has a timeout; results are plain data for decide.py."""

from __future__ import annotations

import datetime
import socket
import ssl
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import cast

TIMEOUT = 8.0
PORT_TIMEOUT = 2.0
SCAN_WORKERS = 64


@dataclass(frozen=True)
class Origin:
    """Where probes start from: the name to greet with, the CAs to trust (None: the
    system's store), source addresses, and a context every connect runs in (the lab's
    internet namespace for the operator's view)."""

    helo: str
    cafile: str | None = None
    source_v4: str | None = None
    source_v6: str | None = None
    vantage: Callable[[], AbstractContextManager] = field(default=nullcontext)


def connect(o: Origin, ip: str, port: int, timeout: float) -> socket.socket:
    src = o.source_v6 if ":" in ip else o.source_v4
    with o.vantage():
        return socket.create_connection((ip, port), timeout, (src, 0) if src else None)


def port_open(o: Origin, ip: str, port: int) -> bool:
    try:
        connect(o, ip, port, PORT_TIMEOUT).close()
        return True
    except OSError:
        return False


def open_ports(o: Origin, ip: str, ports, pool: ThreadPoolExecutor | None = None) -> set[int]:
    """Which of `ports` accept a connection, all probed at once (a dropped port waits
    out its timeout)."""
    ports = list(ports)
    if pool is None:
        with ThreadPoolExecutor(max_workers=min(SCAN_WORKERS, max(1, len(ports)))) as p:
            return open_ports(o, ip, ports, p)
    futures = [pool.submit(port_open, o, ip, p) for p in ports]
    return {p for p, f in zip(ports, futures) if f.result()}


def tls_context(o: Origin, verify: bool) -> ssl.SSLContext:
    if not verify:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx
    return ssl.create_default_context(cafile=o.cafile) if o.cafile else ssl.create_default_context()


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
        out: list[str] = []
        for _ in range(100):
            ln = self.line()
            if ln.startswith("OK"):
                return out
            if ln.startswith(("NO", "BYE")):
                raise ConnectionError(ln)
            out.append(ln)
        raise ConnectionError("no OK from ManageSieve")


# ------------------------------------------------------------------ certificates


@dataclass
class TlsResult:
    days_left: float | None = None
    names: tuple[str, ...] = ()
    verify_error: str | None = None


def _der(data: bytes, i: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at i."""
    tag, n = data[i], data[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        n = int.from_bytes(data[i : i + k], "big")
        i += k
    return tag, i, i + n


def _children(data: bytes, start: int, end: int) -> list[tuple[int, int, int]]:
    out = []
    while start < end:
        el = _der(data, start)
        out.append(el)
        start = el[2]
    return out


_SAN_OID = bytes.fromhex("551d11")  # 2.5.29.17 subjectAltName


def cert_info(der: bytes, now: datetime.datetime | None = None) -> tuple[float, tuple[str, ...]]:
    """(days left, DNS names of the subjectAltName) of a DER certificate. The standard
    library only decodes verified peers' certificates, and an untrusted one is still
    worth describing, so the two fields are read here (RFC 5280 4.1)."""
    _, s, e = _der(der, 0)
    tbs = _children(der, *_der(der, s)[1:])
    if tbs[0][0] == 0xA0:  # [0] version
        tbs = tbs[1:]
    _, vs, ve = tbs[3]  # serial, signature, issuer, validity
    tag, a, b = _children(der, vs, ve)[1]
    text = der[a:b].decode("ascii").rstrip("Z")
    fmt = "%y%m%d%H%M%S" if tag == 0x17 else "%Y%m%d%H%M%S"
    not_after = datetime.datetime.strptime(text, fmt).replace(tzinfo=datetime.UTC)
    now = now or datetime.datetime.now(datetime.UTC)
    names: list[str] = []
    for tag, a, b in tbs[6:]:  # subject, subjectPublicKeyInfo, then [1] [2] [3]
        if tag != 0xA3:
            continue
        for _, xa, xb in _children(der, *_der(der, a)[1:]):
            parts = _children(der, xa, xb)
            if der[parts[0][1] : parts[0][2]] != _SAN_OID:
                continue
            _, oa, ob = parts[-1]  # extnValue: OCTET STRING holding GeneralNames
            for gtag, ga, gb in _children(der, *_der(der, oa)[1:]):
                if gtag == 0x82:  # [2] dNSName
                    names.append(der[ga:gb].decode("ascii", errors="replace"))
    return (not_after - now).total_seconds() / 86400, tuple(names)


def handshake(o: Origin, ip: str, port: int, sni: str, verify: bool) -> ssl.SSLSocket:
    """Connect, speak the port's plain-text prelude if any, and do the TLS handshake."""
    sock = connect(o, ip, port, TIMEOUT)
    sock.settimeout(TIMEOUT)
    try:
        if port in (25, 587):
            c = Lines(sock)
            c.smtp_reply()
            c.send(f"EHLO {o.helo}")
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
        return tls_context(o, verify).wrap_socket(sock, server_hostname=sni)
    except BaseException:
        sock.close()
        raise


def certificate(o: Origin, ip: str, port: int, sni: str) -> TlsResult:
    try:
        with handshake(o, ip, port, sni, verify=True) as s:
            left, names = cert_info(cast(bytes, s.getpeercert(binary_form=True)))
            return TlsResult(left, names)
    except ssl.SSLCertVerificationError as exc:
        err = exc.verify_message or str(exc)
    except (OSError, ConnectionError, ValueError, IndexError) as exc:
        return TlsResult(verify_error=f"{type(exc).__name__}: {exc}"[:160])
    try:  # not trusted: look at it anyway, for the report
        with handshake(o, ip, port, sni, verify=False) as s:
            left, names = cert_info(cast(bytes, s.getpeercert(binary_form=True)))
            return TlsResult(left, names, err)
    except (OSError, ConnectionError, ValueError, IndexError) as exc:
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


def smtp(o: Origin, ip: str, port: int, sni: str, relay_probe: str | None = None) -> SmtpResult:
    """Greeting, EHLO before TLS, STARTTLS, EHLO after it; on 25 a relay attempt first."""
    res = SmtpResult()
    try:
        sock = connect(o, ip, port, TIMEOUT)
    except OSError as exc:
        res.error = f"connect: {exc}"
        return res
    try:
        sock.settimeout(TIMEOUT)
        c = Lines(sock)
        code, lines = c.smtp_reply()
        res.banner = f"{code} {lines[0]}" if lines else str(code)
        c.send(f"EHLO {o.helo}")
        code, feats = c.smtp_reply()
        res.features = feats[1:] if code == 250 else []
        if relay_probe:
            c.send(f"MAIL FROM:<status-probe@{o.helo}>")
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
                ts = tls_context(o, verify=False).wrap_socket(sock, server_hostname=sni)
                res.tls_ok = True
                c2 = Lines(ts)
                c2.send(f"EHLO {o.helo}")
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


def smtps_banner(o: Origin, ip: str, port: int, sni: str) -> tuple[str | None, str | None]:
    try:
        with handshake(o, ip, port, sni, verify=False) as s:
            s.settimeout(TIMEOUT)
            code, lines = Lines(s).smtp_reply()
            return f"{code} {lines[0] if lines else ''}", None
    except (OSError, ConnectionError, ValueError) as exc:
        return None, f"{type(exc).__name__}: {exc}"[:160]


# ------------------------------------------------------------------ HTTPS


def https_get(o: Origin, ip: str, name: str, path: str) -> tuple[int | None, str | None, str | None]:
    """(status, body, error) of GET https://name/path, connecting to ip."""
    try:
        with handshake(o, ip, 443, name, verify=True) as s:
            s.settimeout(TIMEOUT)
            s.sendall(
                f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n"
                f"User-Agent: mailstack-status\r\n\r\n".encode()
            )
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
        body = rest[size + 2 :]
    return out
