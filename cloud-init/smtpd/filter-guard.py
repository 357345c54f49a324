#!/usr/bin/python3
# Installed by mailstack (mailstack/smtpd.py).
# Usage: filter-guard [--swap-login-fields] [--strip-headers DOMAIN] FILTER [ARGS...]
#
# Sits between smtpd and a filter process it runs (opensmtpd-filter-rspamd 0.1.7 and
# opensmtpd-filter-senderscore 0.1.1). When a filter process exits, smtpd exits too
# ("lost processor"), so nothing a client sends may reach a filter in a shape that
# makes it exit. See docs/mail-flow.md. What both filters get wrong with OpenSMTPD 7.4:
# - They split every line on '|' and exit ("invalid input, shouldn't happen") when a
#   report has more fields than they expect. The user name of a failed AUTH, the HELO
#   name and the client's reverse DNS name come from strangers and may contain '|'; in
#   those fields it is written as %7C (the filters only hand them on to Rspamd).
# - They read lines with Go's bufio.Scanner, which gives up on a line over 64 KiB and
#   exits. smtpd takes data lines up to 64 KiB, so with the protocol's prefix a long
#   line goes over: such lines are cut into pieces (RFC 5322 allows 998 characters).
# --swap-login-fields: 7.4 reports link-auth as "<session>|<result>|<user>", but
#   filter-rspamd 0.1.7 reads user|result, never sees "pass", and so authenticated mail
#   went out unsigned. The two are swapped.
# --strip-headers DOMAIN: a message's own header section loses every X-Spam* header and
#   every Authentication-Results header whose authserv-id is DOMAIN or a name under it,
#   before the filter (and so Rspamd) sees them: only Rspamd's verdict may speak for this
#   system (RFC 8601 section 5). Names are compared without regard to case, on the
#   unfolded header, so a folded or lower-case forgery goes too; filter-rspamd's own
#   removal matches the exact spelling only.
# Every other line passes through byte for byte.
import re
import subprocess
import sys

MAX_LINE = 60000  # below bufio.MaxScanTokenSize (64 KiB) with room for the prefix
PIPE = b"%7C"


def fix(line: bytes, swap_link_auth: bool = False) -> list[bytes]:
    f = line.split(b"|")
    if len(f) < 6:
        return [line]
    kind, event = f[0], f[4]
    if kind == b"report" and f[3] == b"smtp-in":
        head = f[:6]
        if event == b"link-auth" and len(f) >= 8:  # result|user
            result, user = f[6], PIPE.join(f[7:])
            return [b"|".join(head + ([user, result] if swap_link_auth else [result, user]))]
        if event == b"link-identify" and len(f) > 8:  # method|helo
            return [b"|".join(head + [f[6], PIPE.join(f[7:])])]
        if event == b"link-connect" and len(f) > 10:  # rdns|fcrdns|src|dest
            return [b"|".join(head + [PIPE.join(f[6:-3])] + f[-3:])]
    if kind == b"filter" and event == b"data-line" and len(line) > MAX_LINE:
        prefix = b"|".join(f[:7]) + b"|"  # ...|data-line|session|token|
        data = line[len(prefix) :]
        step = MAX_LINE - len(prefix)
        return [prefix + data[i : i + step] for i in range(0, len(data), step)]
    return [line]


class HeaderStrip:
    """Drops forged verdict headers from each message's header section. A header is held
    back until its last continuation line has arrived, then passed on or dropped whole."""

    def __init__(self, domain: str):
        self.domain = domain.lower().rstrip(".").encode()
        self.sessions: dict[bytes, dict] = {}

    def forged(self, text: bytes) -> bool:
        name, _, value = text.partition(b":")
        name = name.strip().lower()
        if name.startswith(b"x-spam"):
            return True
        if name != b"authentication-results":
            return False
        value = re.sub(rb"\([^()]*\)", b" ", value)  # comments, e.g. (version)
        ident = value.split(b";", 1)[0].split()
        ident = ident[0].lower().rstrip(b".") if ident else b""
        return ident == self.domain or ident.endswith(b"." + self.domain)

    def feed(self, proto: bytes, session: bytes, data: bytes) -> list[bytes]:
        st = self.sessions.setdefault(session, {"headers": True, "held": [], "text": b""})
        out: list[bytes] = []
        if not st["headers"]:
            if data == b".":
                del self.sessions[session]
            return [proto]
        if data[:1] in (b" ", b"\t") and st["held"]:
            st["held"].append(proto)
            st["text"] += data
            return []
        # Any other line ends the held header.
        if st["held"] and not self.forged(st["text"]):
            out += st["held"]
        st["held"], st["text"] = [], b""
        if data in (b"", b"."):
            st["headers"] = False
            if data == b".":
                del self.sessions[session]
            return out + [proto]
        st["held"], st["text"] = [proto], data
        return out

    def forget(self, session: bytes) -> None:
        self.sessions.pop(session, None)


def main(argv: list[str]) -> int:
    swap = argv[:1] == ["--swap-login-fields"]
    argv = argv[1:] if swap else argv
    strip = None
    if argv[:1] == ["--strip-headers"]:
        strip, argv = HeaderStrip(argv[1]), argv[2:]
    child = subprocess.Popen(argv, stdin=subprocess.PIPE)
    out = child.stdin
    try:
        for raw in sys.stdin.buffer:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            lines = [line]
            if strip is not None:
                f = line.split(b"|", 7)
                if len(f) == 8 and f[0] == b"filter" and f[4] == b"data-line":
                    lines = strip.feed(line, f[5], f[7])
                elif len(f) >= 6 and f[0] == b"report" and f[4] == b"link-disconnect":
                    strip.forget(f[5])
            for piece in (p for one in lines for p in fix(one, swap)):
                out.write(piece + b"\n")
            out.flush()
    except BrokenPipeError:
        pass
    finally:
        try:
            out.close()
        except BrokenPipeError:
            pass
    return child.wait()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
