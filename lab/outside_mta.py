"""The outside MTA's receiving side (mx.outside.example.com): enough ESMTP with STARTTLS to take
mail the stack sends out, stored with its envelope for the scenarios to check. It
accepts only its own domain, so a relay attempt through it would show up as a 550.
Sending into the stack is done by the scenarios with smtplib from the same address."""
from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time

from . import net
from .internet import OUTSIDE_DOMAIN, OUTSIDE_MX, OUTSIDE_SPOOL, TLSDIR

_counter = 0
_lock = threading.Lock()


class Handler(socketserver.StreamRequestHandler):
    timeout = 120

    def send(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def handle(self) -> None:
        tls = False
        mail_from, rcpts = None, []
        self.send(f"220 {OUTSIDE_MX} ESMTP lab")
        while True:
            raw = self.rfile.readline(4096)
            if not raw:
                return
            line = raw.decode(errors="replace").rstrip("\r\n")
            cmd = line[:4].upper()
            if cmd in ("EHLO", "HELO"):
                if cmd == "HELO":
                    self.send(f"250 {OUTSIDE_MX}")
                else:
                    caps = ["8BITMIME", "PIPELINING", "SIZE 52428800"] + ([] if tls else ["STARTTLS"])
                    self.wfile.write(f"250-{OUTSIDE_MX}\r\n".encode())
                    for i, c in enumerate(caps):
                        self.send(f"250{'-' if i < len(caps) - 1 else ' '}{c}")
            elif line.upper() == "STARTTLS" and not tls:
                self.send("220 go ahead")
                ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
                ctx.load_cert_chain(TLSDIR / "outside.pem", TLSDIR / "outside.key")
                self.request = ctx.wrap_socket(self.request, server_side=True)
                self.rfile = self.request.makefile("rb")
                self.wfile = self.request.makefile("wb")
                tls = True
                mail_from, rcpts = None, []
            elif cmd == "MAIL":
                mail_from = line.split(":", 1)[1].strip().split()[0].strip("<>")
                rcpts = []
                self.send("250 ok")
            elif cmd == "RCPT":
                rcpt = line.split(":", 1)[1].strip().split()[0].strip("<>")
                if rcpt.lower().endswith("@" + OUTSIDE_DOMAIN):
                    rcpts.append(rcpt)
                    self.send("250 ok")
                else:
                    self.send("550 5.7.1 relaying denied")
            elif cmd == "DATA":
                if not (mail_from is not None and rcpts):
                    self.send("503 need MAIL and RCPT")
                    continue
                self.send("354 end with .")
                body = []
                while True:
                    l = self.rfile.readline()
                    if not l or l in (b".\r\n", b".\n"):
                        break
                    body.append(l[1:] if l.startswith(b"..") else l)
                self._store(mail_from, rcpts, tls, b"".join(body))
                self.send("250 queued")
                mail_from, rcpts = None, []
            elif cmd == "RSET":
                mail_from, rcpts = None, []
                self.send("250 ok")
            elif cmd == "NOOP":
                self.send("250 ok")
            elif cmd == "QUIT":
                self.send("221 bye")
                return
            else:
                self.send("502 not implemented")

    def _store(self, mail_from, rcpts, tls, data: bytes) -> None:
        global _counter
        with _lock:
            _counter += 1
            n = _counter
        head = (f"X-Lab-Mail-From: {mail_from}\r\nX-Lab-Rcpt-To: {', '.join(rcpts)}\r\n"
                f"X-Lab-Peer: {self.client_address[0]}\r\nX-Lab-TLS: {'yes' if tls else 'no'}\r\n")
        tmp = OUTSIDE_SPOOL / f".{n}.tmp"
        tmp.write_bytes(head.encode() + data)
        tmp.rename(OUTSIDE_SPOOL / f"{time.time():.6f}-{n}.eml")


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


class Server6(Server):
    address_family = socket.AF_INET6


def main() -> int:
    OUTSIDE_SPOOL.mkdir(parents=True, exist_ok=True)
    servers = [Server((net.OUTSIDE_V4, 25), Handler), Server6((net.OUTSIDE_V6, 25), Handler)]
    for s in servers[1:]:
        threading.Thread(target=s.serve_forever, daemon=True).start()
    servers[0].serve_forever()
    return 0
