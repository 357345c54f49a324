"""Rspamd local.d files, checked by the real `rspamadm configtest` the way the deploy
script does it (LOCAL_CONFDIR pointing at the staged files)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from mailstack import dovecot, redis
from mailstack import rspamd as spam
from tests.daemons.netns import Netns
from tests.daemons.rspamd import CONTROLLER_PASSWORD
from tests.daemons.rspamd import start as start_rspamd


def stage_local(bundle, root: Path) -> Path:
    for f in bundle.files:
        if f.path.startswith(("/etc/rspamd/local.d/", "/etc/rspamd/override.d/")):
            p = root / Path(f.path).relative_to("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f.content)
    return root / "etc/rspamd"


def configtest(local_confdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["rspamadm", f"--var=LOCAL_CONFDIR={local_confdir}", "configtest"], capture_output=True, text=True, timeout=60
    )


def configdump(local_confdir: Path, section: str) -> str:
    """section as rspamd itself reads it from the staged files."""
    r = subprocess.run(
        ["rspamadm", f"--var=LOCAL_CONFDIR={local_confdir}", "configdump", section],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.mark.parametrize("role", ["mx1", "mx2"])
def test_rspamd_accepts_rendered_config(ctx, role, tmp_path):
    r = configtest(stage_local(spam.bundle(ctx, ctx.hosts[role]), tmp_path))
    assert r.returncode == 0 and "syntax OK" in r.stdout, r.stdout + r.stderr


def test_rspamd_rejects_broken_local_file(ctx, tmp_path):
    confdir = stage_local(spam.bundle(ctx, ctx.hosts["mx1"]), tmp_path)
    conf = confdir / "local.d/dkim_signing.conf"
    conf.write_text(conf.read_text().replace("domain {", "domain {{"))
    assert configtest(confdir).returncode != 0


def test_dkim_signing_only_where_mail_is_submitted(ctx, single_ctx):
    mx1 = spam.bundle(ctx, ctx.hosts["mx1"])
    mx2 = spam.bundle(ctx, ctx.hosts["mx2"])
    sel = ctx.settings.dkim.selector
    for d in ctx.settings.domains:
        key = mx1.file(spam.key_path(d, sel))
        assert key.content == ctx.secrets.dkim_keys[d]
        assert (key.owner, key.group, key.mode, key.secret) == ("root", "_rspamd", 0o640, True)
        assert f"{d} {{" in mx1.file(f"{spam.LOCAL_D}/dkim_signing.conf").content
    assert not any("dkim" in f.path for f in mx2.files)
    assert spam.bundle(single_ctx, single_ctx.hosts["mx1"]).file(f"{spam.LOCAL_D}/dkim_signing.conf")
    assert spam.bundle(ctx, ctx.hosts["imap"]).files == ()


def test_controller_password_is_hashed_on_the_server_only(ctx):
    b = spam.bundle(ctx, ctx.hosts["mx1"])
    pw = ctx.secrets.rspamd_controller_password
    staged = b.file(spam.PASSWORD_FILE)
    assert staged.secret and staged.mode == 0o600 and staged.content == pw
    assert pw not in b.script
    # Staged for hashing, never installed.
    assert "install_file " + spam.PASSWORD_FILE not in b.script
    # The clear text never goes on a command line (visible in /proc to every process).
    assert "rspamadm pw -q -p" not in b.script and '$(cat "$(staged' not in b.script
    assert not spam.PASSWORD_FILE.startswith(spam.LOCAL_D)


def test_controller_hash_script_is_idempotent(ctx, tmp_path):
    """Run the hashing part of the real script twice against a temporary tree: the
    first run writes a worker-controller.inc whose hash `rspamadm pw -c` accepts, the
    second finds the sha256 unchanged and stages nothing."""
    b = spam.bundle(ctx, ctx.hosts["mx1"])
    # Rspamd's part (Redis's comes first in the step), up to the config check.
    script = b.script.split("# --- Rspamd")[1].split("# local.d is included")[0]
    inc, pw_sum = tmp_path / "worker-controller.inc", tmp_path / "pw.sha256"
    script = script.replace(spam.CONTROLLER_INC, str(inc)).replace(spam.PASSWORD_SUM, str(pw_sum))
    program = "\n".join(
        [
            "set -euo pipefail",
            f"STAGE={tmp_path}/stage; STEP=test",
            'staged() { printf \'%s%s\' "$STAGE" "$1"; }',
            'log() { echo "$*" >&2; }',
            f'mkdir -p "$STAGE$(dirname {spam.PASSWORD_FILE})"',
            f"printf '%s' {ctx.secrets.rspamd_controller_password!r} > \"$STAGE{spam.PASSWORD_FILE}\"",
            script,
            # what install_file would do
            f'if [ -e "$STAGE{inc}" ]; then cp "$STAGE{inc}" {inc}; cp "$STAGE{pw_sum}" {pw_sum}; echo hashed; fi',
            'rm -rf "$STAGE"',
        ]
    )
    first = subprocess.run(["bash", "-c", program], capture_output=True, text=True)
    assert first.returncode == 0 and first.stdout.strip() == "hashed", first.stderr
    assert ctx.secrets.rspamd_controller_password not in first.stdout + first.stderr
    text = inc.read_text()
    assert ctx.secrets.rspamd_controller_password not in text
    pw_hash = text.split('password = "')[1].split('"')[0]

    def verify(password: str) -> bool:
        # rspamadm pw -c reads the clear text from a terminal only.
        # script(1) gives it one; the clear text is typed once the prompt can be there.
        r = subprocess.run(
            [
                "bash",
                "-c",
                'for i in 1 2 3 4 5; do sleep 0.2; printf "%s\\n" "$PW"; done '
                "| script -qec \"rspamadm pw -c -p '$HASH'\" /dev/null",
            ],
            env={"PW": password, "HASH": pw_hash, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        return r.returncode == 0 and "password correct" in r.stdout

    assert verify(ctx.secrets.rspamd_controller_password)
    assert not verify("not-the-password")
    second = subprocess.run(["bash", "-c", program], capture_output=True, text=True)
    assert second.returncode == 0 and second.stdout.strip() == "", second.stderr
    assert inc.read_text() == text


@pytest.mark.parametrize("enabled", [False, True])
def test_test_patterns_only_when_asked(enabled, tmp_path):
    """rspamd itself reads the option from options.inc (configdump), and only when the
    stack asks for it: production keeps the GTUBE-like shortcuts off."""
    from tests.conftest import make_context, settings_from

    c = make_context(settings_from(spam={"testPatterns": enabled}))
    confdir = stage_local(spam.bundle(c, c.hosts["mx1"]), tmp_path)
    assert configtest(confdir).returncode == 0
    dump = configdump(confdir, "options")
    assert ("enable_test_patterns = true" in dump) is enabled, dump
    assert '"127.0.0.1:53"' in dump


def test_greylisting_is_off(ctx, tmp_path):
    """rspamd itself reports the greylist module disabled with the rendered local.d."""
    confdir = stage_local(spam.bundle(ctx, ctx.hosts["mx1"]), tmp_path)
    dump = configdump(confdir, "greylist")
    assert "enabled = false" in dump, dump


# --------------------------------------------------------------------------- DKIM rotation


def _rotating_ctx(now: str):
    import dataclasses

    from tests.conftest import make_context
    from tests.test_dkim import rotating
    from tests.test_dns import _other_key

    ctx = make_context(rotating(now))
    ring = {sel: {d: _other_key(sel) for d in ctx.settings.domains} for sel in ("mail", "mail-g1")}
    sign = spam.dkim.plan(ctx.settings).signing.selector
    return dataclasses.replace(
        ctx,
        secrets=dataclasses.replace(
            ctx.secrets, dkim_keys=ring[sign], dkim_keyring={s: ring[s] for s in spam.dkim.plan(ctx.settings).selectors}
        ),
    ), ring


@pytest.mark.parametrize(
    "now,signing,files",
    [
        ("2026-12-01T00:00:00Z", "mail", ("mail",)),
        ("2026-12-26T00:00:00Z", "mail", ("mail", "mail-g1")),  # next key staged, unused
        ("2027-01-02T00:00:00Z", "mail-g1", ("mail", "mail-g1")),  # previous kept in its grace
        ("2027-01-09T00:00:00Z", "mail-g1", ("mail-g1",)),  # previous key file dropped
    ],
)
def test_dkim_signing_follows_the_rotation_phase(now, signing, files, tmp_path):
    ctx, ring = _rotating_ctx(now)
    b = spam.bundle(ctx, ctx.hosts["mx1"])
    conf = b.file(f"{spam.LOCAL_D}/dkim_signing.conf").content
    assert f'selector = "{signing}";' in conf
    assert {s for s in ("mail", "mail-g1") if f'"{s}"' in conf} == {signing}
    for d in ctx.settings.domains:
        assert f"{spam.KEY_DIR}/{d}.{signing}.key" in conf
    keys = {f.path: f.content for f in b.files if f.path.startswith(spam.KEY_DIR + "/")}
    assert keys == {spam.key_path(d, s): ring[s][d] for s in files for d in ctx.settings.domains}
    r = configtest(stage_local(b, tmp_path))
    assert r.returncode == 0 and "syntax OK" in r.stdout, r.stdout + r.stderr


def test_retired_key_files_are_pruned_only_where_keys_live(ctx):
    mx1 = spam.bundle(ctx, ctx.hosts["mx1"]).script
    assert f"for f in {spam.KEY_DIR}/*.key" in mx1 and "rm -f --" in mx1
    assert "rm -f --" not in spam.bundle(ctx, ctx.hosts["mx2"]).script


def _guard(ctx, key_dir: Path, conf: Path) -> str:
    """The signing-switch guard of mx1's rspamd step, pointed at a scratch directory."""
    from mailstack.templates import render

    script = render(
        "rspamd/deploy.sh.j2",
        password_file="",
        password_sum="",
        controller_inc="",
        key_dir=str(key_dir),
        prune_keys=True,
        signing_conf=str(conf),
        signing_selector=spam.dkim.plan(ctx.settings).signing.selector,
        domains=ctx.settings.domains,
        ttl=ctx.settings.dns.ttl,
    )
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('current=""'))
    end = next(i for i in range(start + 4, len(lines)) if lines[i] == "fi")
    # As every step runs (mailstack/bundle.py).
    return 'set -euo pipefail\nlog() { echo "$*" >&2; }\n' + "\n".join(lines[start : end + 1]) + "\necho switched\n"


def _run_guard(ctx, tmp_path, current: str | None, key_age: int | None):
    import os
    import time

    key_dir, conf = tmp_path / "dkim", tmp_path / "dkim_signing.conf"
    key_dir.mkdir(exist_ok=True)
    if current is not None:
        conf.write_text(f'enabled = true;\nselector = "{current}";\n')
    sel = spam.dkim.plan(ctx.settings).signing.selector
    for d in ctx.settings.domains:
        f = key_dir / f"{d}.{sel}.key"
        f.unlink(missing_ok=True)
        if key_age is not None:
            f.write_text("key")
            os.utime(f, (time.time() - key_age,) * 2)
    return subprocess.run(["bash", "-c", _guard(ctx, key_dir, conf)], capture_output=True, text=True)


def test_signing_never_switches_to_a_key_published_less_than_a_ttl_ago(tmp_path):
    """A missed run of the schedule (publish and switch in one run): mx1's step refuses."""
    ctx, _ = _rotating_ctx("2027-01-02T00:00:00Z")  # mail-g1 signs
    ttl = ctx.settings.dns.ttl
    r = _run_guard(ctx, tmp_path, current="mail", key_age=10)
    assert r.returncode == 1 and "switched" not in r.stdout
    assert (
        "refusing to sign with DKIM selector mail-g1 (now mail): the key for example.org was published 10s ago"
    ) in r.stderr
    assert f"less than the record's TTL ({ttl}s); run the deploy (pulumi up) again in" in r.stderr
    # published a TTL ago (the publish window's run): switches
    assert _run_guard(ctx, tmp_path, current="mail", key_age=ttl + 5).stdout == "switched\n"
    # already signing with it, or a fresh host: nothing to guard
    assert _run_guard(ctx, tmp_path, current="mail-g1", key_age=1).stdout == "switched\n"
    assert (
        _run_guard(
            ctx, tmp_path / "fresh" if (tmp_path / "fresh").mkdir() is None else None, current=None, key_age=1
        ).stdout
        == "switched\n"
    )


# --------------------------------------------------------------------------- learning


def test_bayes_lives_in_mx1_redis_for_every_scanner(tmp_path):
    """rspamd itself (configdump) reads the classifier from the rendered files: every
    Rspamd that scans mail uses mx1's Redis (mx2's over the private network, mx1's over
    loopback), with the Redis password, and votes after bayesMinLearns learns."""
    from tests.conftest import make_context, settings_from

    for topology, roles in (("ha", ("mx1", "mx2")), ("single", ("mx1",))):
        c = make_context(settings_from(topology=topology, spam={"bayesMinLearns": 7}))
        for role in roles:
            confdir = stage_local(spam.bundle(c, c.hosts[role]), tmp_path / topology / role)
            dump = configdump(confdir, "classifier")
            want = "10.77.1.11" if role == "mx2" else "127.0.0.1"
            assert f'servers = "{want}:{redis.PORT}";' in dump, dump
            assert f'password = "{c.secrets.redis_password}";' in dump
            assert "min_learns = 7;" in dump
            for name in ("redis.conf", "classifier-bayes.conf"):
                f = spam.bundle(c, c.hosts[role]).file(f"{spam.LOCAL_D}/{name}")
                assert (f.owner, f.group, f.mode, f.secret) == ("root", "_rspamd", 0o640, True)


def test_controller_on_the_private_network_only_for_a_separate_imap_host(ctx, single_ctx, tmp_path):
    def binds(c, role):
        confdir = stage_local(spam.bundle(c, c.hosts[role]), tmp_path / f"{id(c)}-{role}")
        dump = configdump(confdir, "worker")
        return {b for b in re.findall(r'bind_socket = "([^"]+)";', dump) if b.endswith(":11334")}

    assert binds(ctx, "mx1") == {"localhost:11334", "10.77.1.11:11334"}
    assert binds(ctx, "mx2") == {"localhost:11334"}
    assert binds(single_ctx, "mx1") == {"localhost:11334"}


def start_redis(ns, ctx, host, root: Path):
    """A real redis-server with the host's rendered file (Debian's redis.conf included),
    in the namespace; only where it keeps its data and logs is moved."""
    conf = root / "redis-mailstack.conf"
    conf.write_text(redis.conf(ctx, host))
    p = ns.start(
        "redis-server",
        conf,
        "--port",
        str(redis.PORT),
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        root,
        "--daemonize",
        "no",
        "--supervised",
        "no",
        "--logfile",
        "",
        "--pidfile",
        root / "redis.pid",
        log=root / "redis.log",
    )
    ns.wait_port("127.0.0.1", redis.PORT, p, root / "redis.log")
    return p


def _netns(root: Path, ctx, clients: list[str], more: tuple[str, ...] = ()):
    return Netns(root, ctx.hosts["mx1"].private_ip, clients, more_server_ips=more)


def test_redis_wants_the_password_and_listens_on_loopback_and_the_private_ip(ctx, single_ctx):
    assert "bind 127.0.0.1 -::1\n" in redis.conf(single_ctx, single_ctx.hosts["mx1"])
    assert "bind 127.0.0.1 -::1\n" in redis.conf(ctx, ctx.hosts["mx2"])
    mx1 = ctx.hosts["mx1"]
    root = Path(tempfile.mkdtemp(prefix="mailstack-redis-"))
    public = "198.51.100.11"
    ns = _netns(root, ctx, [ctx.hosts["mx2"].private_ip], (public,))
    try:
        start_redis(ns, ctx, mx1, root)
        auth = {**os.environ, "REDISCLI_AUTH": ctx.secrets.redis_password}

        def cli(ip, env=None):
            return ns.run("redis-cli", "-h", ip, "-p", str(redis.PORT), "ping", client=True, env=env)

        # From mx2's address: the private IP answers, with the password only.
        assert cli(mx1.private_ip, auth).stdout.strip() == "PONG"
        assert "NOAUTH" in cli(mx1.private_ip).stdout
        # Not on any other address of the host.
        r = cli(public, auth)
        assert "PONG" not in r.stdout and "refused" in (r.stdout + r.stderr).lower(), r
        # On the host itself, as the deploy step and backups ask it (redis.CLI).
        r = ns.run("bash", "-c", redis.CLI.replace(redis.CONF, str(root / "redis-mailstack.conf")) + " ping")
        assert r.stdout.strip() == "PONG", r
    finally:
        ns.close()
        shutil.rmtree(root, ignore_errors=True)


SPAM_TEXT = (
    "cheap pharmacy pills discount casino jackpot bonus crypto wallet investment "
    "guaranteed profit winner lottery claim prize urgent offer limited exclusive deal\n"
) * 4


def test_learning_from_the_imap_host_reaches_bayes_in_redis(ctx):
    """The rendered learning program, run from imap's private address as Dovecot runs it,
    teaches mx1's real Rspamd (its controller on the private IP, the password read from
    the program's file) and the count lands in the real Redis with its password."""
    imap_host = ctx.hosts["imap"]
    root = Path(tempfile.mkdtemp(prefix="mailstack-learn-"))
    root.chmod(0o755)
    ns = _netns(root, ctx, [imap_host.private_ip])
    try:
        start_redis(ns, ctx, ctx.hosts["mx1"], root)
        rspamd = start_rspamd(ns, ctx, root)
        ns.wait_port(ctx.hosts["mx1"].private_ip, spam.CONTROLLER_PORT, rspamd, root / "rspamd.out")
        layout = dovecot.Layout(etc=str(root / "imap"), libexec=str(root / "libexec"))
        files = {Path(f.path).name: f for f in dovecot.learn_files(ctx, imap_host, layout)}
        program, pwfile = files[dovecot.LEARN_PROGRAM], files["rspamd-learn.password"]
        for f in (program, pwfile):
            Path(f.path).parent.mkdir(parents=True, exist_ok=True)
            Path(f.path).write_text(f.content if f is program else CONTROLLER_PASSWORD)
            Path(f.path).chmod(f.mode)
        assert ctx.secrets.rspamd_controller_password not in program.content

        def stat():
            r = ns.run(
                "rspamc",
                "-h",
                f"{ctx.hosts['mx1'].private_ip}:{spam.CONTROLLER_PORT}",
                "-P",
                pwfile.path,
                "stat",
                client=True,
            )
            assert r.returncode == 0, r.stdout + r.stderr
            return {k: int(v) for k, v in re.findall(r"Statfile: (BAYES_\w+) .*?learned: (\d+)", r.stdout)}

        assert stat() == {"BAYES_SPAM": 0, "BAYES_HAM": 0}
        msg = (
            "From: a@outside.example.com\r\nTo: alice@example.org\r\nSubject: offer\r\n"
            f"Message-ID: <{uuid.uuid4().hex}@outside.example.com>\r\n\r\n{SPAM_TEXT}"
        )
        r = ns.run("sh", program.path, "spam", client=True, input=msg)
        assert r.returncode == 0, r.stdout + r.stderr
        # The controller refreshes its counts from Redis every half minute or so.
        end = time.monotonic() + 120
        while stat() != {"BAYES_SPAM": 1, "BAYES_HAM": 0} and time.monotonic() < end:
            time.sleep(3)
        assert stat() == {"BAYES_SPAM": 1, "BAYES_HAM": 0}, r.stdout + (root / "rspamd.log").read_text()[-3000:]
        r = ns.run("sh", program.path, "nonsense", client=True, input=msg)
        assert r.returncode != 0
        # The learned data is in Redis (Rspamd keeps nothing of it itself).
        keys = ns.run(
            "redis-cli",
            "--scan",
            "--pattern",
            "BAYES_SPAM*",
            env={**os.environ, "REDISCLI_AUTH": ctx.secrets.redis_password},
        )
        assert keys.stdout.split(), keys
        # A wrong password is refused.
        Path(pwfile.path).write_text("not-the-password")
        r = ns.run("sh", program.path, "spam", client=True, input=msg.replace("offer", "offer 2"))
        assert r.returncode != 0
    finally:
        ns.close()
        shutil.rmtree(root, ignore_errors=True)
