"""Dovecot with the rendered config: installed into a temp dir (`install`), on loopback
ports against a throwaway PostgreSQL (the `dovecot` fixture, single topology)."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from mailstack import dovecot as imap
from mailstack import hosts as H
from mailstack import postgresql as D
from tests.conftest import make_context, settings_from
from tests.daemons.certs import ec_pair
from tests.daemons.ports import free_port, port_open, wait
from tests.daemons.postgresql import start_primary


def imap_host(ctx) -> H.Host:
    return ctx.host_for(H.IMAP)


def install(ctx, host, layout: imap.Layout) -> None:
    """Write host's rendered Dovecot files where layout puts them, owners and modes as rendered."""
    for f in imap.files(ctx, host, layout):
        p = Path(f.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f.content)
        # The machine running the tests may have no vmail group (with_vmail_user).
        shutil.chown(p, f.owner, H.VMAIL_UID if f.group == imap.VMAIL_USER else f.group)
        p.chmod(f.mode)


def layout_under(base: Path, **more) -> imap.Layout:
    """A Dovecot layout with every directory under base (etc, vmail, tls, run, state,
    libexec, dovecot.log); more: other fields (ports, a path kept elsewhere)."""
    return imap.Layout(
        **{
            "etc": str(base / "etc"),
            "vmail": str(base / "vmail"),
            "tls_dir": str(base / "tls"),
            "base_dir": str(base / "run"),
            "state_dir": str(base / "state"),
            "log_path": str(base / "dovecot.log"),
            "libexec": str(base / "libexec"),
            **more,
        }
    )


def make_dirs(layout: imap.Layout) -> None:
    """The directories Dovecot wants before it starts: etc/sieve, state, libexec, and the
    mail store, vmail's own and closed to others, as on the servers."""
    for d in (f"{layout.etc}/sieve", layout.state_dir, layout.libexec):
        Path(d).mkdir(parents=True)
    Path(layout.vmail).mkdir(mode=0o750)
    os.chown(layout.vmail, H.VMAIL_UID, H.VMAIL_UID)


def with_vmail_user(base: Path, argv: list[str]) -> list[str]:
    """argv in a mount namespace whose /etc/passwd and /etc/group know vmail, as the
    servers' do (Dovecot's quota-warning and dict services run as, or for, vmail): the
    machine running the tests keeps its own. A daemonized Dovecot stays in it."""
    for name, line in (
        ("passwd", f"vmail:x:{H.VMAIL_UID}:{H.VMAIL_UID}::/var/vmail:/usr/sbin/nologin"),
        ("group", f"vmail:x:{H.VMAIL_UID}:"),
    ):
        copy = base / f"etc-{name}"
        if not copy.exists():
            copy.write_text(Path(f"/etc/{name}").read_text() + line + "\n")
    return [
        "unshare",
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        f"mount --bind {base}/etc-passwd /etc/passwd && mount --bind {base}/etc-group /etc/group "
        f"&& exec {shlex.join(argv)}",
    ]


@pytest.fixture(scope="module")
def dovecot():
    settings = settings_from(topology="single")
    ctx = make_context(settings)
    host = imap_host(ctx)
    base = Path(tempfile.mkdtemp(prefix="mailstack-dovecot-"))
    base.chmod(0o755)
    primary = None
    pid_file = base / "run" / "master.pid"
    try:
        primary = start_primary(base, ctx)
        primary.sql(D.sync_sql(settings, ctx.secrets.user_hashes), D.DB_NAME)
        layout = layout_under(
            base, imaps_port=free_port(), lmtp_port=free_port(), sieve_port=free_port(), db_port=primary.port
        )
        make_dirs(layout)
        ec_pair(Path(layout.tls_dir), host.fqdn)
        install(ctx, host, layout)
        conf = str(base / "etc" / "dovecot.conf")
        for name in imap.global_sieves():
            subprocess.run(
                ["sievec", "-c", conf, base / "etc" / "sieve" / name], check=True, capture_output=True, timeout=30
            )
        # The master daemonizes; its children would hold captured pipes open.
        subprocess.run(
            with_vmail_user(base, ["dovecot", "-c", conf]),
            check=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=30,
        )
        try:
            wait(lambda: all(port_open(p) for p in (layout.imaps_port, layout.sieve_port)), "dovecot", 30)
        except AssertionError:
            raise AssertionError((base / "dovecot.log").read_text()) from None
        # LMTP binds 127.0.0.1 in single; in ha it is the private IP (checked above).
        wait(lambda: port_open(layout.lmtp_port), "lmtp", 10)
        yield dict(ctx=ctx, layout=layout, base=base, conf=conf, host=host, primary=primary)
    finally:
        if pid_file.exists():
            pid = int(pid_file.read_text())
            subprocess.run(
                with_vmail_user(base, ["doveadm", "-c", str(base / "etc" / "dovecot.conf"), "stop"]),
                capture_output=True,
                timeout=30,
            )
            end = time.monotonic() + 15
            while time.monotonic() < end and Path(f"/proc/{pid}").exists():
                time.sleep(0.1)
            if Path(f"/proc/{pid}").exists():
                os.kill(pid, 9)
        if primary is not None:
            primary.stop()
        shutil.rmtree(base, ignore_errors=True)
