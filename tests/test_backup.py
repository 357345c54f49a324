"""Backups: settings, the deploy step's rendering, and a real restic backup and restore
of a Maildir tree through a real sshd (SFTP only, chrooted, key login) on loopback, with
the very program and config the servers get."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from lab import storage as LS
from mailstack import backup as B
from mailstack import deploy
from mailstack import hosts as H
from mailstack.settings import SettingsError

from .conftest import ed25519_openssh, make_context, settings_from
from .daemons.ports import free_port

# --------------------------------------------------------------------------- settings


def test_backup_defaults_to_a_storage_box_with_restore_on_empty():
    b = settings_from().backup
    assert b.target == "storagebox" and b.restore_on_empty and b.enabled
    assert (b.keep.daily, b.keep.weekly, b.keep.monthly) == (7, 5, 12)


@pytest.mark.parametrize(
    "bad, key, fix",
    [
        ({"target": "s4://bucket"}, "mailstack:backup.target", "sftp://user@host"),
        ({"target": "sftp://u@h:23/"}, "mailstack:backup.target", "names no directory"),
        ({"schedule": "daily; rm -rf /"}, "mailstack:backup.schedule", "man systemd.time"),
        ({"keep": {"daily": 0, "weekly": 0, "monthly": 0}}, "mailstack:backup.keep", "daily: 7"),
        ({"knownHosts": ["not a key"]}, "mailstack:backup.knownHosts[0]", "ssh-keyscan"),
        ({"keep": {"daily": -1}}, "mailstack:backup.keep.daily", "greater than or equal"),
    ],
)
def test_bad_backup_settings_name_key_value_and_fix(bad, key, fix):
    with pytest.raises(SettingsError) as e:
        settings_from(backup=bad)
    line = next(p for p in e.value.problems if p.startswith(key))
    assert fix in line


S3 = {
    "target": "s3:https://fsn1.your-objectstorage.com/mail-backups/mailstack",
    "s3": {"accessKeyId": "AKIDEXAMPLE", "secretAccessKey": "wJalrXUtnFEMI-secret"},
}


def _s3_settings(backup: dict, secret: bool = True):
    from mailstack.settings import load_settings
    from tests.conftest import stack_config

    return load_settings(stack_config(backup=backup), ["mailstack:users", *(["mailstack:backup"] if secret else [])])


@pytest.mark.parametrize(
    "bad, secret, fix",
    [
        ({"target": "s3:https://host/Bad_Bucket!"}, True, "not an S3 target"),
        ({"target": "s3:https://host/bucket/../x", "s3": S3["s3"]}, True, "climbs out"),
        ({"target": S3["target"]}, True, "needs accessKeyId and secretAccessKey"),
        (S3, False, "stored in clear text"),
        ({"target": "storagebox", "s3": S3["s3"]}, True, "not an s3: target"),
    ],
)
def test_bad_s3_backup_settings_name_key_value_and_fix(bad, secret, fix):
    with pytest.raises(SettingsError) as e:
        _s3_settings(bad, secret)
    line = next(p for p in e.value.problems if p.startswith("mailstack:backup."))
    assert fix in line, line


def test_s3_target_credentials_travel_only_in_a_secret_0600_file():
    ctx = make_context(_s3_settings(S3))
    b = B.bundle(ctx, ctx.hosts["imap"])
    conf = json.loads(b.file(B.Layout().config).content)
    assert conf["repository"] == "s3:https://fsn1.your-objectstorage.com/mail-backups/mailstack/imap"
    assert not [a for a in conf["restic"] if "sftp" in a]
    env = b.file("/etc/mailstack/backup/s3.env")
    assert env.secret and env.mode == 0o600 and "AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI-secret" in env.content
    assert {f.path for f in b.files if f.secret} == {"/etc/mailstack/backup/password", env.path}
    for f in b.files:
        if not f.secret:
            assert "wJalrXUtnFEMI-secret" not in f.content
    assert "wJalrXUtnFEMI-secret" not in b.script
    assert "backup-keys" not in {s.name for s in deploy.plan(ctx.settings)}


def test_storage_box_location_follows_the_servers_where_boxes_exist():
    assert settings_from().storage_box_location == "fsn1"
    assert settings_from(hetzner={"location": "hel1"}).storage_box_location == "hel1"
    assert settings_from(hetzner={"location": "ash"}).storage_box_location == "fsn1"


# --------------------------------------------------------------------------- plan, rendering


def test_data_hosts_restore_before_their_services_and_the_primary_before_the_sync():
    steps = {s.name: s for s in deploy.plan(settings_from())}
    assert B.parts(H.hosts(settings_from())["imap"]) == ("mail",)
    assert B.parts(H.hosts(settings_from())["mx1"]) == ("db", "rspamd")
    assert "backup-mx2" not in steps  # a replica and a queue: nothing of its own
    assert "backup-imap" in steps["services-imap"].depends_on
    assert "backup-mx1" in steps["mail-sync"].depends_on
    assert "backup-mx1" in steps["services-mx1"].depends_on
    single = {s.name for s in deploy.plan(settings_from(topology="single"))}
    assert "backup-mx1" in single
    assert B.parts(H.hosts(settings_from(topology="single"))["mx1"]) == ("mail", "db", "rspamd")
    assert not [s for s in deploy.plan(settings_from(backup={"target": "none"})) if s.name.startswith("backup-")]


def test_secrets_travel_only_as_secret_0600_files():
    ctx = make_context(settings_from())
    b = B.bundle(ctx, ctx.hosts["imap"])
    pw, key = ctx.secrets.backup_passwords["imap"], ctx.secrets.backup_keys["imap"]
    secret = {f.path for f in b.files if f.secret}
    assert secret == {"/etc/mailstack/backup/password", "/etc/mailstack/backup/id_ed25519"}
    assert all(b.file(p).mode == 0o600 for p in secret)
    for f in b.files:
        if not f.secret:
            assert pw not in f.content and key.splitlines()[1] not in f.content
    assert pw not in b.script
    conf = json.loads(b.file(B.Layout().config).content)
    # Storage Box: SFTP on port 23, one repository per host
    assert conf["repository"] == "sftp:mailstack-backup:mailstack/imap"
    ssh = b.file("/etc/mailstack/backup/ssh_config").content
    assert "Port 23" in ssh and "User u1" in ssh and "HostName u1.your-storagebox.de" in ssh
    assert "StrictHostKeyChecking accept-new" in ssh
    pinned = make_context(settings_from(backup={"knownHosts": ["[h]:23 ssh-ed25519 AAAA"]}))
    assert "StrictHostKeyChecking yes" in B.ssh_config(pinned)


def test_timer_uses_the_schedule_and_systemd_accepts_the_units(tmp_path):
    ctx = make_context(settings_from(backup={"schedule": "*-*-* 02:30:00"}))
    b = B.bundle(ctx, ctx.hosts["mx1"])
    timer = b.file("/etc/systemd/system/mailstack-backup.timer").content
    assert "OnCalendar=*-*-* 02:30:00" in timer and "Persistent=true" in timer
    for f in b.files:
        if f.path.startswith("/etc/systemd/system/"):
            (tmp_path / Path(f.path).name).write_text(f.content)
    if shutil.which("systemd-analyze"):
        r = subprocess.run(["systemd-analyze", "calendar", "*-*-* 02:30:00"], capture_output=True)
        assert r.returncode == 0


# --------------------------------------------------------------------------- real restic + sshd


@pytest.fixture
def sftp_target():
    if os.geteuid() != 0 or not shutil.which("restic") or not Path("/usr/sbin/sshd").exists():
        pytest.skip("needs root, restic and sshd (scripts/setup-host.sh)")
    base = Path(tempfile.mkdtemp(prefix="mailstack-storage-", dir="/run"))
    st = LS.Storage(base, "127.0.0.1", free_port())
    priv, pub = ed25519_openssh("backup-imap")
    LS.prepare(st, [pub])
    proc = subprocess.Popen(
        LS.command(st), stdin=subprocess.DEVNULL, stdout=open(base / "sshd.log", "ab"), stderr=subprocess.STDOUT
    )
    try:
        LS.wait_listening(st)
        yield st
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(base, ignore_errors=True)


def _install(ctx, host, layout, tmp: Path) -> dict:
    for f in B.files(ctx, host, layout):
        p = Path(f.path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f.content)
        os.chmod(p, f.mode)
    prog = tmp / "mailstack-backup"
    prog.write_text(B.program())
    prog.chmod(0o755)
    (tmp / "mailstack-restore").symlink_to("mailstack-backup")
    return dict(os.environ, MAILSTACK_BACKUP_CONFIG=layout.config)


def _maildir(root: Path, *folders: str) -> None:
    for f in ("", *folders):
        for sub in ("cur", "new", "tmp"):
            (root / f / sub).mkdir(parents=True, exist_ok=True)


def _mail_store(vmail: Path) -> None:
    """Two users: folders, flags (Seen, Answered, Flagged, a keyword), a Sieve script."""
    alice = vmail / "example.org" / "alice"
    _maildir(alice / "Maildir", ".Archive", ".Junk")
    m = alice / "Maildir"
    (m / "cur" / "1700000001.M1P1.imap,S=20,W=21:2,S").write_text("Subject: one\n\nseen\n")
    (m / "cur" / "1700000002.M2P1.imap,S=20,W=21:2,FRa").write_text("Subject: two\n\nflagged\n")
    (m / "new" / "1700000003.M3P1.imap,S=20,W=21").write_text("Subject: three\n\nunread\n")
    (m / ".Archive" / "cur" / "1700000004.M4P1.imap,S=20,W=21:2,S").write_text("Subject: four\n\n")
    (m / "dovecot-keywords").write_text("0 $Important\n")
    (m / "dovecot-uidlist").write_text("3 V1 N4 G0\n1 1700000001.M1P1.imap\n")
    (m / "subscriptions").write_text("Archive\nJunk\n")
    (alice / "sieve").mkdir()
    (alice / "sieve" / "main.sieve").write_text('require "fileinto";\nfileinto "Archive";\n')
    (alice / ".dovecot.sieve").symlink_to("sieve/main.sieve")
    bob = vmail / "example.org" / "bob"
    _maildir(bob / "Maildir")
    (bob / "Maildir" / "cur" / "1700000005.M5P1.imap,S=20,W=21:2,RS").write_text("Subject: five\n\n")
    for root, dirs, files in os.walk(vmail):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), H.VMAIL_UID, H.VMAIL_UID)


def _tree(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        st = p.lstat()
        owner = f"{st.st_uid}:{st.st_gid}"
        if p.is_symlink():
            out[rel] = f"-> {os.readlink(p)} {owner}"
        elif p.is_file():
            out[rel] = f"{p.read_text()} {owner}"
        else:
            out[rel] = f"dir {owner}"
    return out


def _run(env, tmp: Path, *args, name="mailstack-backup"):
    r = subprocess.run([str(tmp / name), *args], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return r


def _layout(tmp: Path) -> B.Layout:
    """Everything the backup program reads and writes, under tmp, without systemd."""
    return B.Layout(
        conf_dir=str(tmp / "etc"),
        vmail=str(tmp / "vmail"),
        dump_dir=str(tmp / "dump"),
        status_file=str(tmp / "status.json"),
        cache_dir=str(tmp / "cache"),
        systemd=False,
    )


def _sftp_context(sftp_target, role: str):
    """A stack backing up to sftp_target, role holding the key the storage host accepts."""
    s = settings_from(backup={"target": sftp_target.target(), "knownHosts": [sftp_target.known_hosts_line()]})
    priv, _ = ed25519_openssh("backup-imap")
    ctx = make_context(s)
    return replace(ctx, secrets=replace(ctx.secrets, backup_keys={role: priv}))


def _lose_and_restore(env, tmp: Path, vmail: Path, before: dict[str, str]) -> None:
    """The store is lost; a fresh host restores everything, exactly."""
    shutil.rmtree(vmail)
    vmail.mkdir()
    _run(env, tmp, "--if-empty", name="mailstack-restore")
    assert _tree(vmail) == before


def test_restic_backup_and_restore_of_a_mail_store_over_sftp(sftp_target, tmp_path):
    ctx = _sftp_context(sftp_target, "imap")
    layout = _layout(tmp_path)
    env = _install(ctx, ctx.hosts["imap"], layout, tmp_path)
    vmail = Path(layout.vmail)
    _mail_store(vmail)
    before = _tree(vmail)

    _run(env, tmp_path, "init")
    _run(env, tmp_path, "init")  # idempotent: the repository stays
    _run(env, tmp_path)
    status = json.loads(Path(layout.status_file).read_text())
    assert status["last_run"]["result"] == "ok" and status["last_check"]["result"] == "ok"
    assert status["last_success"]["snapshot"] and status["last_success"]["repository_bytes"] > 0
    # encrypted: no message text on the storage side
    repo = sftp_target.home / LS.REPO_DIR / "imap"
    assert (repo / "config").exists()
    assert not any(b"flagged" in p.read_bytes() for p in repo.rglob("*") if p.is_file())
    # the password never shows in the config restic is run with
    assert ctx.secrets.backup_passwords["imap"] not in Path(layout.config).read_text()

    _lose_and_restore(env, tmp_path, vmail, before)
    assert not (vmail / ".mailstack-restore").exists()
    # Not empty any more: --if-empty leaves it alone.
    r = _run(env, tmp_path, "--if-empty", name="mailstack-restore")
    assert "restoring" not in r.stderr

    # One user deletes mail and changes a flag; --only ADDRESS brings back exactly what
    # is missing and doubles nothing.
    m = vmail / "example.org" / "alice" / "Maildir"
    (m / "cur" / "1700000001.M1P1.imap,S=20,W=21:2,S").unlink()
    shutil.rmtree(m / ".Archive")
    os.rename(m / "cur" / "1700000002.M2P1.imap,S=20,W=21:2,FRa", m / "cur" / "1700000002.M2P1.imap,S=20,W=21:2,RSa")
    (vmail / "example.org" / "bob" / "Maildir" / "cur" / "1700000005.M5P1.imap,S=20,W=21:2,RS").unlink()
    _run(env, tmp_path, "--only", "alice@example.org", name="mailstack-restore")
    names = sorted(p.name for p in m.rglob("*") if p.parent.name in ("cur", "new"))
    assert names == sorted(
        [
            "1700000001.M1P1.imap,S=20,W=21:2,S",
            "1700000002.M2P1.imap,S=20,W=21:2,RSa",
            "1700000003.M3P1.imap,S=20,W=21",
            "1700000004.M4P1.imap,S=20,W=21:2,S",
        ]
    )
    assert (m / ".Archive" / "cur" / "1700000004.M4P1.imap,S=20,W=21:2,S").exists()
    assert not list((vmail / "example.org" / "bob" / "Maildir" / "cur").iterdir())  # bob untouched
    assert all(p.lstat().st_uid == H.VMAIL_UID for p in m.rglob("*"))
    status = json.loads(Path(layout.status_file).read_text())
    assert status["last_restore"]["address"] == "alice@example.org"


def test_backup_keys_step_writes_the_boxs_authorized_keys_with_the_boxs_own_key(sftp_target, tmp_path):
    """A box that knows only its own key (as after creation, when a host's key is added
    or rotated later): the `backup-keys` step writes every data host's key into it, then
    the hosts reach their repositories; a rerun writes nothing; a rotated key replaces
    the old one."""
    manager, manager_pub = ed25519_openssh("backup-keys")
    sftp_target.authorized_keys.write_text(manager_pub + "\n")
    keys = {r: ed25519_openssh(f"backup-{r}")[0] for r in ("imap", "mx1")}
    s = settings_from(backup={"target": "storagebox", "knownHosts": [sftp_target.known_hosts_line()]})
    ctx = make_context(s)
    ctx = replace(
        ctx,
        storage_box={"server": "127.0.0.1", "username": LS.USER, "port": str(sftp_target.port)},
        secrets=replace(ctx.secrets, backup_keys=keys, backup_manager_key=manager),
    )
    layout = _layout(tmp_path)
    (tmp_path / "vmail").mkdir()
    env = _install(ctx, ctx.hosts["imap"], layout, tmp_path)
    r = subprocess.run(
        [str(tmp_path / "mailstack-backup"), "init"], env=env, capture_output=True, text=True, timeout=120
    )
    assert r.returncode != 0  # imap's key isn't on the box yet

    def step(c):
        b = B.keys_bundle(c, layout)
        assert {f.path for f in b.files if f.secret} == {f"{layout.conf_dir}/keys/id_ed25519"}
        r = subprocess.run(["bash", "-s"], input=b.shell("backup-keys"), capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stderr
        return r.stderr

    assert "writing the backup target's authorized keys (3 keys)" in step(ctx)
    assert sftp_target.authorized_keys.read_text() == B.authorized_keys(ctx)
    lines = sftp_target.authorized_keys.read_text().splitlines()
    assert lines[0] == B.public_openssh(manager, B.MANAGER_COMMENT)
    assert [ln.split()[2] for ln in lines[1:]] == ["mailstack-backup-imap", "mailstack-backup-mx1"]
    assert not (tmp_path / "etc" / "keys").exists()  # the box's key was only staged
    _run(env, tmp_path, "init")  # imap reaches its repository now
    assert "writing" not in step(ctx)  # unchanged: nothing written

    rotated = replace(ctx, secrets=replace(ctx.secrets, backup_keys={**keys, "imap": ed25519_openssh("new")[0]}))
    assert "writing" in step(rotated)
    assert B.public_openssh(keys["imap"], "x").split()[1] not in sftp_target.authorized_keys.read_text()
    assert sftp_target.authorized_keys.read_text() == B.authorized_keys(rotated)


def test_storage_box_keys_step_comes_before_every_backup_step():
    steps = {s.name: s for s in deploy.plan(settings_from())}
    assert steps["backup-keys"].host == "mx1"
    assert "backup-keys" in steps["backup-imap"].depends_on
    assert "backup-keys" in steps["backup-mx1"].depends_on
    sftp = settings_from(backup={"target": "sftp://u@h:22/b"})
    assert "backup-keys" not in {s.name for s in deploy.plan(sftp)}


@pytest.fixture
def s3_service():
    """An S3 service on a loopback port: moto's server (no S3 server is packaged in
    Debian 12); restic talks to it with its real S3 client."""
    if not shutil.which("restic"):
        pytest.skip("needs restic (scripts/setup-host.sh)")
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def test_restic_backup_and_restore_of_a_mail_store_over_s3(s3_service, tmp_path):
    s = _s3_settings(
        {
            "target": f"s3:{s3_service}/mail-backups/mailstack",
            "s3": {"accessKeyId": "AKIDTEST", "secretAccessKey": "test-secret-key", "region": "us-east-1"},
        }
    )
    ctx = make_context(s)
    layout = _layout(tmp_path)
    # The credentials come only from the 0600 file (moto puts fake ones in our environment).
    env = {k: v for k, v in _install(ctx, ctx.hosts["imap"], layout, tmp_path).items() if not k.startswith("AWS_")}
    vmail = Path(layout.vmail)
    _mail_store(vmail)
    before = _tree(vmail)
    _run(env, tmp_path, "init")
    _run(env, tmp_path)
    status = json.loads(Path(layout.status_file).read_text())
    assert status["last_run"]["result"] == "ok" and status["last_success"]["snapshot"]
    _lose_and_restore(env, tmp_path, vmail, before)


def test_database_dump_and_restore_through_the_repository(sftp_target, tmp_path):
    """mx1's part: pg_dump into the snapshot; a dropped database comes back with
    `--only db`, an emptied one (a fresh primary) with `--if-empty`."""
    from . import test_postgresql as TD

    ctx = _sftp_context(sftp_target, "mx1")
    s = ctx.settings
    layout = _layout(tmp_path)
    env = _install(ctx, ctx.hosts["mx1"], layout, tmp_path)
    conf = json.loads(Path(layout.config).read_text())
    assert conf["parts"] == ["db", "rspamd"]
    conf["parts"] = ["db"]  # no Redis here; its dump is one command
    Path(layout.config).write_text(json.dumps(conf))

    base = Path(tempfile.mkdtemp(prefix="mailstack-pg-"))
    base.chmod(0o755)
    dbctx = TD.loopback_context(s)
    primary = None
    try:
        primary = TD.start_primary(base, dbctx)
        primary.sql(TD.D.sync_sql(s, dict(dbctx.secrets.user_hashes)), TD.D.DB_NAME)
        # Dovecot's usage copy: its table comes back, its rows don't (an old copy could
        # refuse a mailbox that has room).
        primary.sql(f"INSERT INTO {TD.D.QUOTA_TABLE} (address, bytes) VALUES ('alice@example.org', 42)", TD.D.DB_NAME)
        before = TD.snapshot(primary)
        env = dict(env, PGHOST=str(primary.dir), PGPORT=str(primary.port))
        _run(env, tmp_path, "init")
        _run(env, tmp_path)
        assert json.loads(Path(layout.status_file).read_text())["last_run"]["result"] == "ok"

        primary.sql("DROP DATABASE mailstack")
        _run(env, tmp_path, "--only", "db", name="mailstack-restore")
        rows = lambda snap: {t: [r[1:] for r in v] for t, v in snap.items()}  # noqa: E731
        assert rows(TD.snapshot(primary)) == rows(before)
        assert primary.q(f"SELECT count(*) FROM {TD.D.QUOTA_TABLE}") == [["0"]]
        # the lookup role can read it again (grants came back with the dump)
        r = primary.as_user(TD.D.LOOKUP_USER, dbctx.secrets.lookup_password, "SELECT count(*) FROM users")
        assert r.returncode == 0 and int(r.stdout) == len(s.users), r.stderr

        primary.sql("TRUNCATE quota_usage, aliases, users, domains", TD.D.DB_NAME)
        _run(env, tmp_path, "--if-empty", name="mailstack-restore")
        assert rows(TD.snapshot(primary)) == rows(before)
    finally:
        if primary is not None:
            primary.stop()
        shutil.rmtree(base, ignore_errors=True)
