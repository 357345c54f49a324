"""OpenSMTPD 7.4 staged from the rendered files (paths pointing into a temp dir), its
second instance for mx2 in the same namespace, and the swaks client."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from mailstack import smtpd
from tests.daemons.certs import rsa_pair

SMTPD = shutil.which("smtpd") or "/usr/sbin/smtpd"
MX2_LISTEN = "10.98.0.13"  # mx2's smtpd beside mx1's, when both share a namespace


def stage(ctx, host, root: Path, *, rspamd: bool = True, bind_ip: str | None = None) -> Path:
    """Write host's smtpd files under root, with their paths pointing there. bind_ip:
    listen on that address only, so two hosts' smtpd can share a network namespace."""
    rsa_pair(root / "tls")
    (root / "smtpd").mkdir(parents=True, exist_ok=True)
    b = smtpd.bundle(ctx, host)
    table = root / "smtpd" / "pgsql.conf"
    table.write_text(b.file(smtpd.TABLE_CONF).content)
    shutil.chown(table, "root", "opensmtpd")
    table.chmod(0o640)
    (root / "smtpd" / "dyndns.regex").write_text(b.file(smtpd.DYNDNS_REGEX).content)
    srs = root / "smtpd" / "srs.conf"
    srs.write_text(b.file(smtpd.SRS_CONF).content)
    srs.chmod(0o600)
    quota = root / "smtpd" / "quota.conf"
    quota.write_text(b.file(smtpd.QUOTA_CONF).content)
    shutil.chown(quota, "root", "opensmtpd")
    quota.chmod(0o640)
    guard, quota_filter = root / "filter-guard", root / "filter-quota"
    for path, src in ((guard, smtpd.FILTER_GUARD), (quota_filter, smtpd.FILTER_QUOTA)):
        path.write_text(b.file(src).content)
        path.chmod(0o755)
    conf = b.file(smtpd.SMTPD_CONF).content
    conf = (
        conf.replace("/etc/smtpd/", f"{root}/smtpd/")
        .replace(smtpd.TLS_DIR, f"{root}/tls")
        .replace(smtpd.FILTER_GUARD, str(guard))
        .replace(smtpd.FILTER_QUOTA, str(quota_filter))
    )
    if not rspamd:
        conf = without_rspamd(conf)
    if bind_ip:
        conf = re.sub(r"^listen on :: .*\n", "", conf, flags=re.M).replace(
            "listen on 0.0.0.0 ", f"listen on {bind_ip} "
        )
    path = root / "smtpd.conf"
    path.write_text(conf)
    return path


def without_rspamd(conf: str) -> str:
    conf = re.sub(r'^filter "rspamd" .*\n', "", conf, flags=re.M)
    conf = conf.replace(', "rspamd" }', " }").replace(' filter "rspamd"', "")
    assert "rspamd" not in re.sub(r"#.*", "", conf)
    return conf


def start_mx2(ns, conf: Path, root: Path):
    """mx2's smtpd (conf from stage(..., bind_ip=MX2_LISTEN)) in ns's server namespace,
    with its own queue and control socket in a mount namespace of its own."""
    mx2 = ns.start(
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"mount -t tmpfs tmpfs /var/spool && mount -t tmpfs tmpfs /run && exec {SMTPD} -d -f {conf}",
        log=root / "mx2-smtpd.log",
    )
    ns.wait_port(MX2_LISTEN, 25, mx2, root / "mx2-smtpd.log")
    return mx2


def swaks(ns, *args: str) -> str:
    r = ns.run("swaks", "--hide-informational", "--timeout", "15", *args, client=True)
    return r.stdout + r.stderr


def rcpt_reply(transcript: str) -> str:
    """The server's reply to RCPT TO (or to whatever ended the session)."""
    lines = transcript.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^ ?-> RCPT TO", line) or re.match(r"^ ?~> RCPT TO", line):
            return next(reply for reply in lines[i + 1 :] if re.match(r"^ ?<[~*-]", reply))
    return next((line for line in lines if line.lstrip().startswith("<*")), transcript)
