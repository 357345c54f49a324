"""Malformed and hostile client input for the real daemons, shared by the fast suite
(tests/test_hostile.py) and the lab's `hostile-input` scenario (lab/scenarios/resilience.py).

A session is {"port", "mode" (plain|starttls|smtps), "src" ("ok" or "pipe": the client
whose PTR holds a '|'), "steps"}: each step is a line sent as Latin-1 bytes, so any byte
value can be expressed in JSON. A step starting with "@noreply " is sent without waiting
for an answer (DATA lines); "@raw " sends the bytes exactly (no CRLF added).
The clients that send them (self-contained scripts run inside the client network
namespace) are in lab/hostile_clients.py; their names are importable from here too.
"""

from __future__ import annotations

import base64

from .hostile_clients import HEALTH_CLIENT, IMAP_CLIENT, SMTP_CLIENT  # noqa: F401 (used as cases.X)

# Bytes a client can put anywhere: the filter protocol's delimiter, shell and template
# metacharacters, line breaks and NUL where they don't belong, invalid UTF-8, escapes.
META = [
    "|",
    "||",
    "a|b|c",
    "|pass",
    "|fail|x",
    ";",
    "$(id)",
    "`id`",
    "&&",
    "\\",
    "'",
    '"',
    "<>",
    "\x00",
    "\r",
    "\n",
    "\r\n.",
    "\x00|\x00",
    "\xff\xfe",
    "\xc3\x28",
    "\xed\xa0\x80",
    "%00",
    "\t",
    "\x1b[31m",
    "{{7*7}}",
    "${jndi:x}",
    "\x7f",
    "é€".encode().decode("latin-1"),
    "A" * 1200,
]
LONG = "B" * 70000  # longer than smtpd takes ("500 Line too long")
# Just under smtpd's own limit, but with the filter protocol's prefix over Go's default
# bufio.Scanner line (64 KiB), where filter-rspamd 0.1.7 gives up.
ALMOST_LONG = "C" * 65520

USER, DOMAIN = "alice", "example.org"


def b64(s: str) -> str:
    return base64.b64encode(s.encode("latin-1")).decode()


def _session(steps, port=25, mode="plain", src="ok"):
    return {"port": port, "mode": mode, "src": src, "steps": ["EHLO client.test", *steps, "QUIT"]}


def _message(headers: str, body: str, to: str = f"{USER}@{DOMAIN}") -> list[str]:
    lines = ["From: <x@good.test>", f"To: <{to}>", "Subject: hostile", *headers.split("\r\n"), "", *body.split("\r\n")]
    return [f"@noreply {line}" for line in lines] + ["."]


def _helo():
    out = [_session([f"HELO x{m}y"]) for m in META] + [_session([f"EHLO {m}"]) for m in META]
    out.append(_session([f"EHLO {LONG}"]))
    return out


def _mail():
    out = []
    for m in META:
        for mail in (
            f"MAIL FROM:<a{m}b@good.test>",
            f'MAIL FROM:<"a{m}b"@good.test>',
            f"MAIL FROM:<x@good.test> SIZE={m}",
            f"MAIL FROM:<x@good.test> BODY={m}",
            f"MAIL FROM:<x@good.test> RET={m} ENVID={m}",
            f"MAIL FROM:<x@good.test> AUTH=<{m}>",
            f"MAIL FROM:<x@good{m}.test>",
        ):
            out.append(_session([mail, f"RCPT TO:<{USER}@{DOMAIN}>", "RSET"]))
    out.append(_session([f"MAIL FROM:<{LONG}@good.test>"]))
    out.append(_session(["MAIL FROM:<x@good.test> SMTPUTF8", f"RCPT TO:<\xc3\xa9{USER}@{DOMAIN}>"]))
    return out


def _rcpt():
    out = []
    for m in META:
        out.append(
            _session(
                [
                    "MAIL FROM:<x@good.test>",
                    f"RCPT TO:<{USER}{m}@{DOMAIN}>",
                    f"RCPT TO:<{USER}+{m}@{DOMAIN}>",
                    f'RCPT TO:<"{USER}{m}"@{DOMAIN}>',
                    f"RCPT TO:<{USER}@{DOMAIN}> NOTIFY={m}",
                    f"RCPT TO:<{USER}@{DOMAIN}> ORCPT=rfc822;{m}",
                    f"RCPT TO:<@{m}:{USER}@{DOMAIN}>",
                ]
            )
        )
    out.append(_session(["MAIL FROM:<x@good.test>", f"RCPT TO:<{LONG}@{DOMAIN}>"]))
    return out


def _auth_steps(m: str) -> list[list[str]]:
    """One AUTH exchange per list, each with the byte m somewhere a client controls."""
    return [
        [f"AUTH PLAIN {b64(chr(0) + USER + m + '@' + DOMAIN + chr(0) + 'wrong')}"],
        [f"AUTH PLAIN {b64(m + chr(0) + USER + '@' + DOMAIN + chr(0) + 'wrong' + m)}"],
        [f"AUTH PLAIN {b64(USER + m + '@' + DOMAIN)}"],
        [f"AUTH LOGIN {b64(USER + m + '@' + DOMAIN)}", b64("wrong" + m)],
        ["AUTH LOGIN", b64(m), b64(m)],
        [f"AUTH PLAIN {m}"],
        [f"AUTH {m}"],
    ]


BROKEN_B64 = [
    "!!!!",
    "=",
    "a",
    "YQ",
    "YQ=",
    "====",
    "Zm9v\x00YmFy",
    "*",
    "",
    "A" * 4000,
    b64("\x00\x00\x00"),
    b64("\x00" + "x" * 2000 + "\x00y"),
]


def _auth(port: int, mode: str):
    out = []
    for m in META:
        out += [_session(steps, port, mode) for steps in _auth_steps(m)]
    for junk in BROKEN_B64:
        out.append(_session([f"AUTH PLAIN {junk}"], port, mode))
        out.append(_session(["AUTH PLAIN", junk], port, mode))
        out.append(_session(["AUTH LOGIN", junk, junk], port, mode))
    # Odd sequences: cancel, twice, mail before auth, unknown mechanisms, auth after a
    # successful one, and a correct password with a '|' in the authorisation identity.
    out += [
        _session(["AUTH PLAIN", "*", "AUTH LOGIN", "*"], port, mode),
        _session(["AUTH CRAM-MD5", "*", "AUTH XOAUTH2 x", "AUTH"], port, mode),
        _session(["MAIL FROM:<x@good.test>", f"AUTH PLAIN {b64(chr(0) + 'a|b' + chr(0) + 'c')}"], port, mode),
        _session(
            [
                f"AUTH PLAIN {b64('a|b' + chr(0) + USER + '@' + DOMAIN + chr(0) + '@PASSWORD@')}",
                f"AUTH PLAIN {b64(chr(0) + USER + '@' + DOMAIN + chr(0) + '@PASSWORD@')}",
            ],
            port,
            mode,
        ),
        _session(
            [
                f"AUTH PLAIN {b64(chr(0) + USER + '@' + DOMAIN + chr(0) + '@PASSWORD@')}",
                "MAIL FROM:<alice@example.org> AUTH=<a|b>",
                "RCPT TO:<bob@example.org>",
                "DATA",
                *_message("X-Pipe: a|b|c", "a|b\r\n\x00|\x00"),
            ],
            port,
            mode,
        ),
    ]
    return out


_HEADERS = ["X-A: " + m for m in META] + [
    "X-Broken",
    ": no name",
    "Subject: =?utf-8?B?!!!?=",
    "Subject: =?x?Q?=ZZ?=",
    'Content-Type: multipart/mixed; boundary="|"',
    "Content-Transfer-Encoding: base64",
    "X-Long: " + LONG,
    "From: a|b <c|d@e|f>",
    "Authentication-Results: mx1.example.org; dkim=pass",
]
_BODIES = [m + "\r\n" + m for m in META] + [
    LONG,
    ALMOST_LONG,
    "x\r\n" + ALMOST_LONG[:65000],
    "\r\n".join(["x"] * 3000),
    "--|\r\nContent-Type: text/plain\r\n\r\n!!!!\r\n--|--",
    "..\r\n.x\r\n. \r\n",
]


def _data(port: int, mode: str, authed: bool):
    pre = []
    if authed:
        pre = [f"AUTH PLAIN {b64(chr(0) + USER + '@' + DOMAIN + chr(0) + '@PASSWORD@')}"]
    frm = f"{USER}@{DOMAIN}" if authed else "x@good.test"
    out = []
    for i, (h, b) in enumerate(zip(_HEADERS + ["X-Ok: 1"] * len(_BODIES), ["ok"] * len(_HEADERS) + _BODIES)):
        out.append(
            _session([*pre, f"MAIL FROM:<{frm}>", f"RCPT TO:<bob@{DOMAIN}>", "DATA", *_message(h, b)], port, mode)
        )
    return out


def _commands(port: int, mode: str):
    out = [
        _session([f"{cmd} {m}" for cmd in ("NOOP", "HELP", "VRFY", "EXPN", "RSET", "XYZZY")], port, mode) for m in META
    ]
    out += [
        _session(["DATA", "BDAT 10 LAST", "STARTTLS x", "ETRN |"], port, mode),
        _session(["@raw EHLO a\nMAIL FROM:<x@good.test>\nRCPT TO:<alice@example.org>\n"], port, mode),
        _session(["@raw " + "NOOP\r\n" * 300], port, mode),
        _session(["@raw \x00\x00\x00\r\n", "@raw \r\r\r\n", "@raw \n\n\n"], port, mode),
        _session([LONG], port, mode),
    ]
    return out


def _pipe_rdns():
    return [
        _session(
            [
                "MAIL FROM:<x@good.test>",
                f"RCPT TO:<{USER}@{DOMAIN}>",
                "DATA",
                *_message("X-Ok: 1", "from a client whose PTR holds a pipe"),
            ],
            src="pipe",
        )
        for _ in range(3)
    ]


# The session that once took mx1 off the air: one failed AUTH PLAIN on 587 with a '|'
# in the user name made filter-rspamd exit, and smtpd with it.
PIPE_IN_FAILED_LOGIN = _session(["AUTH PLAIN " + b64("\x00alice|x@example.org\x00wrong")], 587, "starttls")

SMTP_BATCHES: dict[str, list[dict]] = {
    "helo": _helo(),
    "mail-from": _mail(),
    "rcpt-to": _rcpt(),
    "auth-587": _auth(587, "starttls"),
    "auth-465": _auth(465, "smtps"),
    "data-25": _data(25, "plain", False) + _data(25, "starttls", False)[:5],
    "data-587": _data(587, "starttls", True),
    "commands": _commands(25, "plain") + _commands(587, "starttls")[:8],
    "rdns-pipe": _pipe_rdns(),
}


# ------------------------------------------------------------------ IMAP and ManageSieve
# A session: {"proto": "imap"|"sieve", "auth": bool (log in for real first), "steps"}.
# Steps are sent as lines (Latin-1); "@raw " sends bytes as they are.


def _imap_string(m: str) -> str:
    return '"' + m.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _imap():
    out = []
    for m in META:
        out.append(
            {
                "proto": "imap",
                "auth": False,
                "steps": [
                    f"a1 LOGIN {_imap_string(USER + m + '@' + DOMAIN)} {_imap_string('wrong' + m)}",
                    f"a2 AUTHENTICATE PLAIN {b64(chr(0) + USER + m + '@' + DOMAIN + chr(0) + 'x')}",
                    f"a3 ID ({_imap_string(m)} {_imap_string(m)})",
                    f"a4 CAPABILITY {m}",
                    f"{m} NOOP",
                ],
            }
        )
        out.append(
            {
                "proto": "imap",
                "auth": True,
                "steps": [
                    f"b1 SELECT {_imap_string('INBOX' + m)}",
                    f"b2 CREATE {_imap_string('x' + m)}",
                    f"b3 SEARCH TEXT {_imap_string(m)}",
                    f"b4 FETCH 1:* (BODY[{m}])",
                    f"b5 STATUS INBOX ({m})",
                    f"b6 LIST {_imap_string(m)} *",
                    f"b7 DELETE {_imap_string('x' + m)}",
                ],
            }
        )
    for junk in BROKEN_B64:
        out.append({"proto": "imap", "auth": False, "steps": ["c1 AUTHENTICATE PLAIN", junk]})
    out += [
        {"proto": "imap", "auth": False, "steps": ["d1 LOGIN {4294967296}", "d2 LOGIN {99999999+}"]},
        {
            "proto": "imap",
            "auth": True,
            "steps": ["e1 APPEND INBOX {5+}", "@raw a|\x00b\r\n", "e2 APPEND INBOX {70000+}", "@raw " + LONG + "\r\n"],
        },
        {"proto": "imap", "auth": False, "steps": ["f1 " + LONG, "@raw \x00\x00\r\n", "@raw \r\r\r\n"]},
        {"proto": "imap", "auth": False, "steps": ["@raw " + "g NOOP\r\n" * 300]},
    ]
    return out


def _sieve():
    out = []
    for m in META:
        out.append(
            {
                "proto": "sieve",
                "auth": False,
                "steps": [
                    f'AUTHENTICATE "PLAIN" "{b64(chr(0) + USER + m + "@" + DOMAIN + chr(0) + "x")}"',
                    f"AUTHENTICATE {_imap_string(m)}",
                    f"PUTSCRIPT {_imap_string(m)} {{3+}}",
                    "@raw a|b\r\n",
                ],
            }
        )
        script = f'require "fileinto"; if header :contains "subject" "{m}" {{ fileinto "{m}"; }}'
        enc = script.encode("latin-1")
        out.append(
            {
                "proto": "sieve",
                "auth": True,
                "steps": [
                    f"CHECKSCRIPT {{{len(enc)}+}}",
                    "@raw " + script + "\r\n",
                    f"PUTSCRIPT {_imap_string('s' + m)} {{{len(enc)}+}}",
                    "@raw " + script + "\r\n",
                    f"SETACTIVE {_imap_string('s' + m)}",
                    f"GETSCRIPT {_imap_string(m)}",
                    f"DELETESCRIPT {_imap_string('s' + m)}",
                    f"HAVESPACE {_imap_string(m)} {m}",
                ],
            }
        )
    for junk in BROKEN_B64:
        out.append({"proto": "sieve", "auth": False, "steps": [f'AUTHENTICATE "PLAIN" "{junk}"']})
    out += [
        {
            "proto": "sieve",
            "auth": True,
            "steps": [
                f'PUTSCRIPT "big" {{{len(LONG)}+}}',
                "@raw " + LONG + "\r\n",
                'PUTSCRIPT "bin" {4+}',
                "@raw \x00\xff\x00\xfe\r\n",
                'PUTSCRIPT "huge" {4294967296+}',
            ],
        },
        {"proto": "sieve", "auth": False, "steps": [LONG, "@raw \x00\r\n", "LOGOUT x|y"]},
    ]
    return out


IMAP_BATCHES: dict[str, list[dict]] = {"imap": _imap(), "sieve": _sieve()}
