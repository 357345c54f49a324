"""Spam learning: a user moving mail into Junk teaches Rspamd's Bayes classifier spam,
moving it out of Junk teaches it ham (Dovecot IMAPSieve -> rspamc -> mx1's controller
-> mx1's Redis), and every MX's Rspamd then votes with it."""

from __future__ import annotations

import email.utils
import random
import re
from email.message import EmailMessage

from mailstack import dovecot, redis, rspamd

from .. import config, internet, machines
from ..util import wait_until
from .clients import _expect, _host_can_connect, _imap_role, _s, _token, imap_session, machines_roles

USER = "carol@example.net"
# Two vocabularies that share no word: what the user throws into Junk, and what the user
# rescues from it. Each message is a random draw, so no two are alike (Rspamd would refuse
# to learn the same message twice) and the probes are only similar, never copies.
SPAM_WORDS = (
    "cheap pharmacy pills discount viagra casino jackpot bonus crypto wallet "
    "investment guaranteed profit winner lottery claim prize urgent offer limited "
    "exclusive deal bitcoin doubling unclaimed inheritance transfer fee refund"
).split()
HAM_WORDS = (
    "garden tomatoes harvest weekend grandmother recipe soup kitchen bicycle repair "
    "library books chapter choir rehearsal tuesday neighbour fence paint ladder "
    "hiking trail picnic lake photos birthday cake candles school concert"
).split()
# Rspamd's Bayes keys in Redis (statistics, tokens, the cache of learned messages).
BAYES_KEYS = ("'RS*'", "'BAYES_*'", "'learned_ids*'")
N = 3  # learns of each class; lab/stack.yaml sets bayesMinLearns to the same


def _message(token: str, words: tuple[str, ...] | list[str], seed: int) -> EmailMessage:
    rng = random.Random(seed)
    m = EmailMessage()
    m["From"] = f"someone@{internet.OUTSIDE_DOMAIN}"
    m["To"] = USER
    m["Subject"] = f"lab {token} " + " ".join(rng.sample(list(words), 3))
    m["Message-ID"] = f"<{token}@{internet.OUTSIDE_DOMAIN}>"
    m["Date"] = email.utils.formatdate()
    lines = [" ".join(rng.choice(words) for _ in range(12)) for _ in range(8)]
    m.set_content("\n".join(lines) + "\n")
    return m


def _controller_cmd(command: str) -> str:
    """rspamc against mx1's controller, as the IMAP host's learning program runs it:
    as vmail, with the password from its file."""
    ctx = config.context(_s())
    ctl = rspamd.controller_address(ctx, ctx.hosts[_imap_role()])
    return f"runuser -u vmail -- rspamc -h {ctl} -P {dovecot.LEARN_PASSWORD} -t 10 {command}"


def learned() -> dict[str, int]:
    """Rspamd's learned counts per statfile (`rspamc stat`, through the controller)."""
    r = machines.sh(_imap_role(), _controller_cmd("stat"), timeout=60)
    _expect(r.returncode == 0, f"rspamc stat failed: {r.stderr.strip()}")
    counts = dict(re.findall(r"Statfile: (BAYES_\w+) .*?learned: (\d+)", r.stdout))
    _expect(set(counts) == {"BAYES_SPAM", "BAYES_HAM"}, f"no Bayes statfiles in: {r.stdout}")
    return {k: int(v) for k, v in counts.items()}


def verdict(role: str, m: EmailMessage) -> tuple[float, set[str]]:
    """Rspamd's score and symbols for `m` on `role` (its normal worker, as smtpd asks)."""
    r = machines.exec_in(
        role,
        ["rspamc", "-h", f"127.0.0.1:{rspamd.NORMAL_PORT}", "-t", "30", "symbols"],
        input=m.as_string(),
        timeout=60,
    )
    _expect(r.returncode == 0, f"rspamc symbols on {role} failed: {r.stderr.strip()}")
    score = re.search(r"^Score: (-?[\d.]+)", r.stdout, re.M)
    _expect(score is not None, f"no score from {role}: {r.stdout}")
    return float(score.group(1)), set(re.findall(r"^Symbol: (\w+)", r.stdout, re.M))


def _append(c, mailbox: str, m: EmailMessage) -> None:
    typ, data = c.append(mailbox, None, None, m.as_bytes())
    _expect(typ == "OK", f"APPEND to {mailbox}: {data}")


def _move(c, source: str, token: str, target: str) -> None:
    typ, _ = c.select(source)
    _expect(typ == "OK", f"SELECT {source}")
    typ, data = c.uid("SEARCH", None, "SUBJECT", f'"{token}"')
    uids = data[0].split() if typ == "OK" and data[0] else []
    _expect(len(uids) == 1, f"{token} in {USER}'s {source}: {len(uids)} copies")
    typ, data = c.uid("MOVE", uids[0], target)
    _expect(typ == "OK", f"MOVE {token} {source} -> {target}: {data}")


def _forget() -> None:
    """Removes what Rspamd learned (Bayes tokens, counts, the learned-message cache) from
    mx1's Redis, so the scenarios after this one, and a rerun, meet an untrained filter."""
    r = machines.sh(
        "mx1",
        (
            f"export {redis.AUTH_ENV}; for p in {' '.join(BAYES_KEYS)}; do "
            'redis-cli --scan --pattern "$p" | xargs -r -n 100 redis-cli del >/dev/null; done'
        ),
        timeout=60,
    )
    _expect(r.returncode == 0, f"clearing Bayes data on mx1: {r.stderr.strip()}")


def s_learning() -> str:
    """(extra) Junk moves over IMAP teach Rspamd's Bayes; its verdict on similar mail changes."""
    s = _s()
    roles = machines_roles()
    if "mx2" in roles:
        # On mx1's private address, Redis is for mx2 alone and the controller for imap alone.
        mx1 = config.context(s).hosts["mx1"].private_ip
        for role, port, ok in (
            ("mx2", redis.PORT, True),
            ("imap", redis.PORT, False),
            ("imap", rspamd.CONTROLLER_PORT, True),
            ("mx2", rspamd.CONTROLLER_PORT, False),
        ):
            _expect(
                _host_can_connect(role, mx1, port) is ok, f"{role} -> mx1 {mx1}:{port}: {'refused' if ok else 'open'}"
            )
    _expect(s.spam.bayes_min_learns == N, f"lab/stack.yaml: bayesMinLearns {s.spam.bayes_min_learns}, want {N}")
    scanners = [r for r in roles if r in ("mx1", "mx2")]
    probe = _message(_token(), SPAM_WORDS, 1000)
    ham_probe = _message(_token(), HAM_WORDS, 2000)
    # From an untrained filter (a fresh lab has one; a rerun clears it): the controller's
    # /stat reads the counts from Redis again about every half minute, so it reports the
    # cleared state a little later.
    zero = {"BAYES_SPAM": 0, "BAYES_HAM": 0}
    before = learned()
    if before != zero:
        _forget()
        before = wait_until(
            lambda: (lambda a: a if a == zero else None)(learned()),
            120,
            "Rspamd to report no learns after clearing its Bayes data",
            interval=3,
        )
    scores_before = {}
    for role in scanners:
        score, symbols = verdict(role, probe)
        _expect("BAYES_SPAM" not in symbols, f"{role}: BAYES_SPAM before any learning")
        scores_before[role] = score
    spam_tokens, ham_tokens = [_token() for _ in range(N)], [_token() for _ in range(N)]
    try:
        with imap_session(USER) as c:
            # Spam that got through (in the INBOX), and ham the filter got wrong (in Junk);
            # APPEND itself teaches nothing.
            for i, tok in enumerate(spam_tokens):
                _append(c, "INBOX", _message(tok, SPAM_WORDS, i))
            for i, tok in enumerate(ham_tokens):
                _append(c, "Junk", _message(tok, HAM_WORDS, 100 + i))
            _expect(learned() == before, f"APPEND changed the learned counts: {before} -> {learned()}")
            for tok in spam_tokens:
                _move(c, "INBOX", tok, "Junk")
            for tok in ham_tokens:
                _move(c, "Junk", tok, "INBOX")
        want = {"BAYES_SPAM": before["BAYES_SPAM"] + N, "BAYES_HAM": before["BAYES_HAM"] + N}
        after = wait_until(
            lambda: (lambda a: a if a == want else None)(learned()),
            120,
            f"learned counts {want} (were {before})",
            interval=3,
        )
        # A move from Junk to the Trash is not ham.
        trash_tok = _token()
        with imap_session(USER) as c:
            _append(c, "Junk", _message(trash_tok, HAM_WORDS, 300))
            _move(c, "Junk", trash_tok, "Trash")
        _expect(learned() == after, f"a move to the Trash was learned: {after} -> {learned()}")
        # Every Rspamd that scans mail now votes with what imap taught mx1's Redis.
        notes = []
        for role in scanners:
            score, symbols = verdict(role, probe)
            _expect("BAYES_SPAM" in symbols, f"{role}: no BAYES_SPAM after learning ({sorted(symbols)})")
            _expect(score > scores_before[role], f"{role}: score {scores_before[role]} -> {score}")
            _, ham_symbols = verdict(role, ham_probe)
            _expect(
                "BAYES_HAM" in ham_symbols and "BAYES_SPAM" not in ham_symbols,
                f"{role}: the ham probe got {sorted(ham_symbols)}",
            )
            notes.append(f"{role} {scores_before[role]:.2f} -> {score:.2f}")
    finally:
        _forget()
        with imap_session(USER) as c:
            for box in ("INBOX", "Junk", "Trash"):
                if c.select(box)[0] == "OK":
                    typ, data = c.search(None, "FROM", f'"someone@{internet.OUTSIDE_DOMAIN}"')
                    for num in data[0].split() if typ == "OK" and data[0] else []:
                        c.store(num, "+FLAGS", r"\Deleted")
                    c.expunge()
    return (
        f"{N} moves into Junk and {N} out of it learned (BAYES_SPAM {before['BAYES_SPAM']} -> "
        f"{after['BAYES_SPAM']}, BAYES_HAM {before['BAYES_HAM']} -> {after['BAYES_HAM']}), "
        f"a move to the Trash not; a similar message now gets BAYES_SPAM ({', '.join(notes)}), "
        f"a ham-like one BAYES_HAM"
    )
