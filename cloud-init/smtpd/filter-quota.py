#!/usr/bin/python3
# Installed by mailstack (mailstack/smtpd.py).
# Usage: filter-quota CONF   (CONF: lines "conninfo ..." and "query ...", root:opensmtpd 0640)
#
# An OpenSMTPD filter (protocol 0.7) for the rcpt-to phase: a recipient whose mailbox is
# full gets "552 5.2.2" at RCPT, so the sender's server keeps the mail and tells its
# user, instead of us accepting it and bouncing it later. smtpd's tables can't do this:
# a recipient a table refuses gets 550 "unknown user", which is wrong for a full mailbox.
#
# The decision is one query against the PostgreSQL server on this host (the primary on
# mx1, the replica on mx2), on the usage Dovecot's quota clone writes into the primary:
# both MX hosts decide alike, and mx2 needs neither mx1 nor imap to decide.
#
# It never refuses mail because something failed: an unusable address, a database it
# can't reach or a query error all mean "proceed" (the LMTP delivery still enforces the
# quota), and after a failed connection it doesn't try again for a while, so a dead
# database can't slow every session. It never exits on input: smtpd exits with it.
import ctypes
import ctypes.util
import re
import sys
import time

RETRY_AFTER = 10.0  # seconds without a database after a failed connection
REJECT = "552 5.2.2 Mailbox is full; try again later"
# What a table-postgres lookup could match at all; anything else is left to smtpd.
ADDRESS = re.compile(r"^[^\s@|\x00-\x1f\x7f]{1,256}@[A-Za-z0-9.-]{1,253}$")
CONNECTION_OK, PGRES_TUPLES_OK = 0, 2


def log(msg: str) -> None:
    print(f"filter-quota: {msg}", file=sys.stderr, flush=True)


def read_conf(path: str) -> dict[str, str]:
    conf = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.strip().partition(" ")
            if key and not key.startswith("#"):
                conf[key] = value.strip()
    return conf


class Database:
    """One libpq connection through ctypes: libpq is on every MX host (PostgreSQL is),
    a Python driver is not."""

    def __init__(self, conninfo: str, query: str):
        self.pq = ctypes.CDLL(ctypes.util.find_library("pq") or "libpq.so.5")
        vp, cp, i = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int
        for name, res, args in (
            ("PQconnectdb", vp, [cp]),
            ("PQstatus", i, [vp]),
            ("PQfinish", None, [vp]),
            ("PQexecParams", vp, [vp, cp, i, vp, ctypes.POINTER(cp), vp, vp, i]),
            ("PQresultStatus", i, [vp]),
            ("PQntuples", i, [vp]),
            ("PQclear", None, [vp]),
            ("PQerrorMessage", cp, [vp]),
        ):
            fn = getattr(self.pq, name)
            fn.restype, fn.argtypes = res, args
        self.conninfo, self.query = conninfo.encode(), query.encode()
        self.conn = None
        self.down_until = 0.0

    def _connect(self) -> bool:
        if self.conn is not None:
            if self.pq.PQstatus(self.conn) == CONNECTION_OK:
                return True
            self.pq.PQfinish(self.conn)
            self.conn = None
        if time.monotonic() < self.down_until:
            return False
        conn = self.pq.PQconnectdb(self.conninfo)
        if conn and self.pq.PQstatus(conn) == CONNECTION_OK:
            self.conn = conn
            return True
        err = self.pq.PQerrorMessage(conn) if conn else b"out of memory"
        log(f"database unreachable, accepting without a quota check: {err.decode(errors='replace').strip()}")
        if conn:
            self.pq.PQfinish(conn)
        self.down_until = time.monotonic() + RETRY_AFTER
        return False

    def full(self, address: str) -> bool:
        for _ in range(2):  # a connection lost since the last query is made again once
            if not self._connect():
                return False
            params = (ctypes.c_char_p * 1)(address.encode())
            res = self.pq.PQexecParams(self.conn, self.query, 1, None, params, None, None, 0)
            ok = res and self.pq.PQresultStatus(res) == PGRES_TUPLES_OK
            rows = self.pq.PQntuples(res) if ok else 0
            if res:
                self.pq.PQclear(res)
            if ok:
                return rows > 0
            log(f"quota query failed: {self.pq.PQerrorMessage(self.conn).decode(errors='replace').strip()}")
            self.pq.PQfinish(self.conn)
            self.conn = None
        return False


def decide(db: Database, line: str) -> str | None:
    f = line.split("|")
    if len(f) < 8 or f[0] != "filter" or f[3] != "smtp-in" or f[4] != "rcpt-to":
        return None
    session, token, address = f[5], f[6], "|".join(f[7:])
    full = False
    if ADDRESS.match(address):
        try:
            full = db.full(address)
        except Exception as exc:  # never exit: smtpd would go down with us
            log(f"quota check failed, accepting: {exc!r}")
    verdict = f"reject|{REJECT}" if full else "proceed"
    return f"filter-result|{session}|{token}|{verdict}"


def main(argv: list[str]) -> int:
    conf = read_conf(argv[0])
    db = Database(conf["conninfo"], conf["query"])
    out = sys.stdout
    for raw in sys.stdin.buffer:
        line = raw.rstrip(b"\n").decode("utf-8", errors="replace")
        if line.startswith("config|"):
            if line == "config|ready":
                out.write("register|filter|smtp-in|rcpt-to\nregister|ready\n")
                out.flush()
            continue
        answer = decide(db, line)
        if answer is not None:
            out.write(answer + "\n")
            out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
