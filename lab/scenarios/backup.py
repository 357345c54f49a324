"""Backups and restore: a whole imap host lost and restored by its own deploy steps, one
user's deleted mail brought back, the mail database lost and restored on the primary."""

from __future__ import annotations

import base64
import email.utils
import json
import os
import re
import time
from collections import Counter

from .. import internet, machines
from ..util import log, wait_until
from .clients import (
    _expect,
    _imap_login_ok,
    _token,
    imap_session,
    inbound,
    wait_imap,
)

USERS = ("alice@example.org", "bob@example.org", "carol@example.net")
FOLDER = "Projects"
SIEVE_USER, SIEVE_HOME = "carol@example.net", "/var/vmail/example.net/carol"
SIEVE_WORD = "file-me-please"
# Flag sets given to the appended messages in turn (a keyword among them).
FLAGS = ("", "\\Seen", "\\Seen \\Flagged", "\\Answered \\Seen", "$Important", "\\Flagged")
BULK = 30  # appended messages per user, next to the delivered ones
BULK_BYTES = 24_000  # body size of each (random, so it neither compresses nor dedups)

State = dict[str, Counter]  # folder -> Counter of (Message-ID, flags)


def _folders(c) -> list[str]:
    typ, data = c.list()
    out = []
    for line in data or []:
        m = re.match(rb'\((?P<attrs>[^)]*)\) (?:"[^"]*"|NIL) (?P<name>.+)$', line)
        if m and b"\\Noselect" not in m["attrs"]:
            out.append(m["name"].decode().strip('"'))
    return sorted(out)


def mailbox_state(address: str) -> State:
    """Every message of every folder with its flags (\\Recent aside: it is per session)."""
    state: State = {}
    with imap_session(address) as c:
        for folder in _folders(c):
            typ, exists = c.select(f'"{folder}"', readonly=True)
            _expect(typ == "OK", f"{address}: cannot select {folder}")
            state[folder] = Counter()
            if int(exists[0]) == 0:
                continue
            typ, data = c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
            seen: Counter = Counter()
            for item in data or []:
                if not isinstance(item, tuple):
                    continue
                flags = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                fl = " ".join(sorted(f for f in (flags[1].decode().split() if flags else []) if f != "\\Recent"))
                mid = item[1].decode(errors="replace").split(":", 1)[-1].strip()
                seen[(mid, fl)] += 1
            state[folder] = seen
    return state


def _diff(before: State, after: State) -> list[str]:
    problems = []
    for folder in sorted(set(before) | set(after)):
        b, a = before.get(folder, Counter()), after.get(folder, Counter())
        if folder not in after:
            problems.append(f"folder {folder} missing")
        missing, extra = b - a, a - b
        if missing:
            problems.append(f"{folder}: {sum(missing.values())} missing, e.g. {next(iter(missing))}")
        if extra:
            problems.append(f"{folder}: {sum(extra.values())} extra or changed, e.g. {next(iter(extra))}")
    return problems


def _bulk_message(address: str, i: int) -> bytes:
    body = base64.encodebytes(os.urandom(BULK_BYTES * 3 // 4)).decode()
    mid = f"<bulk-{i}-{os.urandom(4).hex()}@outside.example.com>"
    return (
        (
            f"From: archive@outside.example.com\r\nTo: {address}\r\nSubject: old mail {i}\r\n"
            f"Message-ID: {mid}\r\nDate: {email.utils.formatdate()}\r\n\r\n{body}"
        )
        .replace("\n", "\r\n")
        .replace("\r\r\n", "\r\n")
        .encode()
    )


def _fill(address: str, delivered: list[str]) -> None:
    """Folders, flags and old mail in a user's mailbox."""
    with imap_session(address) as c:
        for f in (FOLDER, "Archive"):
            c.create(f)
            c.subscribe(f)
        for i in range(BULK):
            folder = ("INBOX", FOLDER, "Archive")[i % 3]
            flags = FLAGS[i % len(FLAGS)]
            typ, _ = c.append(f'"{folder}"', f"({flags})" if flags else None, None, _bulk_message(address, i))
            _expect(typ == "OK", f"APPEND to {address}'s {folder} failed")
        c.select("INBOX")
        typ, data = c.search(None, "SUBJECT", f'"{delivered[0]}"')
        c.store(data[0].split()[0], "+FLAGS", "(\\Flagged $Important)")


def _install_sieve() -> None:
    script = f'require ["fileinto"];\nif header :contains "subject" "{SIEVE_WORD}" {{ fileinto "{FOLDER}"; stop; }}\n'
    machines.sh(
        "imap",
        (
            f"install -d -o vmail -g vmail -m 0700 {SIEVE_HOME}/sieve && "
            f"printf '%s' '{script}' > {SIEVE_HOME}/sieve/rules.sieve && "
            f"chown vmail:vmail {SIEVE_HOME}/sieve/rules.sieve && "
            f"ln -sfn sieve/rules.sieve {SIEVE_HOME}/.dovecot.sieve && "
            f"chown -h vmail:vmail {SIEVE_HOME}/.dovecot.sieve"
        ),
        check=True,
    )


def _sieve_files(tag: str) -> None:
    tok = f"{_token()} {SIEVE_WORD} {tag}"
    inbound(SIEVE_USER, tok)
    wait_imap(SIEVE_USER, tok, FOLDER, timeout=90)


def _status(role: str) -> dict:
    r = machines.sh(role, "cat /var/lib/mailstack/backup-status.json")
    return json.loads(r.stdout) if r.returncode == 0 else {}


def _sh(role: str, cmd: str, timeout: float = 600) -> str:
    r = machines.sh(role, cmd, timeout=timeout)
    _expect(r.returncode == 0, f"{role}: `{cmd}` failed: {(r.stderr or r.stdout)[-600:]}")
    return r.stdout


def _du(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def s_backup_restore() -> str:
    """(9) imap's mail store lost and restored by the deploy steps; a user's deleted mail
    and the primary's database restored with mailstack-restore."""
    from ..stand import rebuild
    from .clients import machines_roles

    if "imap" not in machines_roles():
        return "skipped: needs the ha topology (a separate imap host to lose)"
    figures: dict[str, str] = {}
    # 1. Mail for several users, with folders, flags and a Sieve script.
    delivered = {u: [_token(), _token()] for u in USERS}
    for u, toks in delivered.items():
        for tok in toks:
            inbound(u, tok)
    for u, toks in delivered.items():
        for tok in toks:
            wait_imap(u, tok, timeout=90)
        _fill(u, toks)
    _install_sieve()
    _sieve_files("before")
    before = {u: mailbox_state(u) for u in USERS}
    total = sum(sum(c.values()) for st in before.values() for c in st.values())
    volume = int(_sh("imap", "du -sb /var/vmail | cut -f1"))
    figures["mail"] = f"{total} messages, {_mb(volume)}"

    # 2. A backup on each data host, by its systemd unit.
    t = time.monotonic()
    _sh("imap", "systemctl start mailstack-backup.service")
    figures["backup imap"] = f"{time.monotonic() - t:.1f}s"
    t = time.monotonic()
    _sh("mx1", "systemctl start mailstack-backup.service")
    figures["backup mx1"] = f"{time.monotonic() - t:.1f}s"
    for role in ("imap", "mx1"):
        st = _status(role)
        _expect(st.get("last_run", {}).get("result") == "ok", f"{role} backup status: {st}")
        _expect(st.get("last_check", {}).get("result") == "ok", f"{role} repository check: {st}")
    figures["repository imap"] = (
        f"{_mb(_status('imap')['last_success']['repository_bytes'])} (restic stats), "
        f"{_mb(_du(internet.storage_repositories() / 'imap'))} on the storage host"
    )

    # 3.-4. imap lost with all its data; a fresh one is deployed and restores by itself.
    times = rebuild("imap")
    figures["rebuild imap"] = (
        f"{times['boot + cloud-init']:.0f}s cloud-init + "
        f"{sum(v for k, v in times.items() if k != 'boot + cloud-init'):.0f}s steps"
    )
    figures["restore imap (in backup-imap)"] = f"{_status('imap')['last_restore']['seconds']:.1f}s"

    # 5. Every message back exactly once, same folders and flags; logins and Sieve work.
    after = {u: mailbox_state(u) for u in USERS}
    problems = [f"{u}: {p}" for u in USERS for p in _diff(before[u], after[u])]
    _expect(not problems, "after the restore: " + "; ".join(problems[:6]))
    # 6. New mail after the restore, through the restored Sieve script too.
    _sieve_files("after")
    tok = _token()
    inbound(USERS[0], tok)
    wait_imap(USERS[0], tok, timeout=90)

    # One user's mail deleted by mistake: --only ADDRESS brings it back, nothing doubled.
    victim = USERS[1]
    with imap_session(victim) as c:
        c.select("INBOX")
        c.store("1:*", "+FLAGS", "(\\Deleted)")
        c.expunge()
        c.unsubscribe(FOLDER)
        c.delete(FOLDER)
    _expect(sum(mailbox_state(victim).get("INBOX", Counter()).values()) == 0, "INBOX not emptied")
    t = time.monotonic()
    _sh("imap", f"mailstack-restore --only {victim}")
    figures[f"restore {victim}"] = f"{time.monotonic() - t:.1f}s"
    problems = _diff(before[victim], mailbox_state(victim))
    _expect(not problems, f"{victim} after --only: " + "; ".join(problems[:6]))

    # The mail database lost on the primary (the replicas follow the DROP at once).
    _sh("mx1", "runuser -u postgres -- psql -X -q -c 'DROP DATABASE mailstack WITH (FORCE)'")
    wait_until(lambda: not _imap_login_ok(USERS[0]), 60, "logins to fail without the database")
    t = time.monotonic()
    _sh("mx1", "mailstack-restore --only db")
    figures["restore db"] = f"{time.monotonic() - t:.1f}s"
    wait_until(lambda: _imap_login_ok(USERS[0]), 60, "logins through imap's replica")
    tok = _token()
    wait_until(lambda: inbound(USERS[2], tok) or True, 60, "mx1 to accept mail again")
    wait_imap(USERS[2], tok, timeout=90)
    count = "runuser -u postgres -- psql -X -Atq -d mailstack -c 'SELECT count(*) FROM users'"
    wait_until(
        lambda: _sh("imap", count).strip() == _sh("mx1", count).strip() != "0",
        60,
        "imap's replica to have the users again",
    )
    streaming = _sh(
        "mx1",
        "runuser -u postgres -- psql -X -Atq -c \"SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'\"",
    )
    _expect(streaming.strip() == "2", f"{streaming.strip()} replicas streaming after the restore")

    text = ", ".join(f"{k} {v}" for k, v in figures.items())
    log(f"backup-restore figures: {text}")
    return text
