"""The client programs of the hostile-input checks (lab/hostile_cases.py holds the
input): self-contained scripts, run with a JSON argument on stdin inside the client
network namespace, by tests/test_hostile.py and the lab's `hostile-input` scenario."""

from __future__ import annotations

# What both clients start with: a TLS context that takes any certificate, and a reader
# that collects replies until `done` says the answer is complete (or the peer closes).
_PRELUDE = r'''
import base64, json, socket, ssl, sys, time
from concurrent.futures import ThreadPoolExecutor
a = json.load(sys.stdin)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE

def read(s, done):
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (socket.timeout, OSError):
            return buf, False
        if not chunk:
            return buf, False
        buf += chunk
        if done(buf):
            return buf, True

def wire(step):
    """A step's bytes, and whether an answer is awaited ("@raw ": as is; "@noreply ": a
    DATA line; otherwise a command line)."""
    step = step.replace("@PASSWORD@", a.get("password", ""))
    if step.startswith("@raw "):
        return step[5:].encode("latin-1"), True
    if step.startswith("@noreply "):
        return step[9:].encode("latin-1") + b"\r\n", False
    return step.encode("latin-1") + b"\r\n", True

def run_all(run):
    # smtpd pauses up to a second after a failed AUTH, Dovecot two: sessions run side by side.
    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(run, enumerate(a["sessions"])))
'''

SMTP_CLIENT = (
    _PRELUDE
    + r"""
def reply(s):
    return read(s, lambda b: any(len(l) >= 4 and l[3:4] == b" " for l in b.split(b"\r\n")[:-1]))

def run(i_sess):
    _, sess = i_sess
    t0 = time.monotonic()
    closed = 0
    src = a["pipe_src"] if sess["src"] == "pipe" else a["src"]
    try:
        raw = socket.create_connection((a["server"], sess["port"]), timeout=20, source_address=(src, 0))
        s = ctx.wrap_socket(raw) if sess["mode"] == "smtps" else raw
        s.settimeout(20)
        _, alive = reply(s)
        if sess["mode"] == "starttls":
            s.sendall(b"EHLO client.test\r\n"); reply(s)
            s.sendall(b"STARTTLS\r\n"); reply(s)
            s = ctx.wrap_socket(s)
        for step in sess["steps"]:
            data, answered = wire(step)
            s.sendall(data)
            if answered:
                _, alive = reply(s)
            if not alive:
                closed = 1
                break
        s.close()
    except (OSError, ssl.SSLError):
        closed = 1
    return closed, time.monotonic() - t0

results = run_all(run)
print(json.dumps({"ran": len(results), "closed_early": sum(c for c, _ in results),
                  "slowest": round(max(t for _, t in results), 1)}))
"""
)


HEALTH_CLIENT = r"""
import json, smtplib, socket, ssl, sys
a = json.load(sys.stdin)
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
out = {"closed": []}
for port in a["ports"]:
    try:
        raw = socket.create_connection((a["server"], port), timeout=15, source_address=(a["src"], 0))
        s = ctx.wrap_socket(raw) if port == 465 else raw
        s.settimeout(15)
        if not s.recv(512).startswith(b"220"):
            out["closed"].append(port)
        s.close()
    except OSError as e:
        out["closed"].append(port)
try:
    c = smtplib.SMTP(a["server"], 587, source_address=(a["src"], 0), timeout=30)
    c.starttls(context=ctx)
    out["auth"] = c.login(a["user"], a["password"])[0]
    c.mail(a["user"])
    c.rcpt("bob@example.org")
    out["delivered"] = c.data(b"From: <%s>\r\nTo: <bob@example.org>\r\nSubject: health\r\n\r\nhi\r\n"
                              % a["user"].encode())[0]
    c.quit()
except (OSError, smtplib.SMTPException) as e:
    out["error"] = repr(e)
print(json.dumps(out))
"""


# ------------------------------------------------------------------ IMAP and ManageSieve

IMAP_CLIENT = (
    _PRELUDE
    + r"""
def sieve_done(buf):
    last = buf.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
    return buf.endswith(b"\r\n") and last[:2] in (b"OK", b"NO", b"BY")

def run(i_sess):
    i, sess = i_sess
    src = a.get("src") or "127.0.2.%d" % (1 + i % 250)
    closed = 0
    try:
        if sess["proto"] == "imap":
            raw = socket.create_connection((a["host"], a["imaps_port"]), timeout=10, source_address=(src, 0))
            s = ctx.wrap_socket(raw); s.settimeout(10)
            read(s, lambda b: b.endswith(b"\r\n"))
            tagged = lambda tag: (lambda b: b.endswith(b"\r\n") and (b"\r\n" + tag + b" " in b"\r\n" + b
                                   or b"* BYE" in b or b"\r\n+ " in b"\r\n" + b))
            if sess["auth"]:
                s.sendall(b'L LOGIN "%s" "%s"\r\n' % (a["user"].encode(), a["password"].encode()))
                read(s, tagged(b"L"))
        else:
            s = socket.create_connection((a["host"], a["sieve_port"]), timeout=10, source_address=(src, 0))
            s.settimeout(10)
            read(s, sieve_done)
            s.sendall(b"STARTTLS\r\n"); read(s, sieve_done)
            s = ctx.wrap_socket(s); s.settimeout(10); read(s, sieve_done)
            if sess["auth"]:
                token = base64.b64encode(b"\0" + a["user"].encode() + b"\0" + a["password"].encode())
                s.sendall(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n'); read(s, sieve_done)
        for step in sess["steps"]:
            s.settimeout(3)
            data, _ = wire(step)
            s.sendall(data)
            if sess["proto"] == "imap":
                tag = data.split(b" ", 1)[0]
                _, alive = read(s, tagged(tag))
            else:
                _, alive = read(s, sieve_done)
            if not alive:
                closed = 1
                break
        s.close()
    except (OSError, ssl.SSLError):
        closed = 1
    return closed

results = run_all(run)
print(json.dumps({"ran": len(results), "closed_early": sum(results)}))
"""
)
