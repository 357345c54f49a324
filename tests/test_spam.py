"""Rspamd local.d files, checked by the real `rspamadm configtest` the way the deploy
script does it (LOCAL_CONFDIR pointing at the staged files)."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from mailstack import spam


def stage_local(bundle, root: Path) -> Path:
    for f in bundle.files:
        if f.path.startswith(("/etc/rspamd/local.d/", "/etc/rspamd/override.d/")):
            p = root / Path(f.path).relative_to("/")
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_text(f.content)
    return root / "etc/rspamd"


def configtest(local_confdir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["rspamadm", f"--var=LOCAL_CONFDIR={local_confdir}", "configtest"],
        capture_output=True, text=True, timeout=60)


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
    assert spam.bundle(single_ctx, single_ctx.hosts["mx1"]).file(
        f"{spam.LOCAL_D}/dkim_signing.conf")
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
    assert "rspamadm pw -q -p" not in b.script and "$(cat \"$(staged" not in b.script
    assert not spam.PASSWORD_FILE.startswith(spam.LOCAL_D)


def test_controller_hash_script_is_idempotent(ctx, tmp_path):
    """Run the hashing part of the real script twice against a temporary tree: the
    first run writes a worker-controller.inc whose hash `rspamadm pw -c` accepts, the
    second finds the sha256 unchanged and stages nothing."""
    b = spam.bundle(ctx, ctx.hosts["mx1"])
    script = b.script.split("# local.d is included")[0]
    inc, pw_sum = tmp_path / "worker-controller.inc", tmp_path / "pw.sha256"
    script = script.replace(spam.CONTROLLER_INC, str(inc)).replace(spam.PASSWORD_SUM, str(pw_sum))
    program = "\n".join([
        "set -euo pipefail",
        f"STAGE={tmp_path}/stage; STEP=test",
        "staged() { printf '%s%s' \"$STAGE\" \"$1\"; }",
        "log() { echo \"$*\" >&2; }",
        f"mkdir -p \"$STAGE$(dirname {spam.PASSWORD_FILE})\"",
        f"printf '%s' {ctx.secrets.rspamd_controller_password!r} > \"$STAGE{spam.PASSWORD_FILE}\"",
        script,
        # what install_file would do
        f"if [ -e \"$STAGE{inc}\" ]; then cp \"$STAGE{inc}\" {inc}; cp \"$STAGE{pw_sum}\" {pw_sum}; echo hashed; fi",
        "rm -rf \"$STAGE\"",
    ])
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
            ["bash", "-c", 'for i in 1 2 3 4 5; do sleep 0.2; printf "%s\\n" "$PW"; done '
             '| script -qec "rspamadm pw -c -p \'$HASH\'" /dev/null'],
            env={"PW": password, "HASH": pw_hash, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
            capture_output=True, text=True, timeout=30)
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
    dump = subprocess.run(
        ["rspamadm", f"--var=LOCAL_CONFDIR={confdir}", "configdump", "options"],
        capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert ("enable_test_patterns = true" in dump.stdout) is enabled, dump.stdout
    assert '"127.0.0.1:53"' in dump.stdout


def test_greylisting_is_off(ctx, tmp_path):
    """rspamd itself reports the greylist module disabled with the rendered local.d."""
    confdir = stage_local(spam.bundle(ctx, ctx.hosts["mx1"]), tmp_path)
    dump = subprocess.run(
        ["rspamadm", f"--var=LOCAL_CONFDIR={confdir}", "configdump", "greylist"],
        capture_output=True, text=True, timeout=60)
    assert dump.returncode == 0, dump.stderr
    assert "enabled = false" in dump.stdout, dump.stdout


# --------------------------------------------------------------------------- DKIM rotation

def _rotating_ctx(now: str):
    import dataclasses

    from tests.conftest import make_context
    from tests.test_dkim import rotating
    from tests.test_dns import _other_key
    ctx = make_context(rotating(now))
    ring = {sel: {d: _other_key(sel) for d in ctx.settings.domains} for sel in ("mail", "mail-g1")}
    sign = spam.dkim.plan(ctx.settings).signing.selector
    return dataclasses.replace(ctx, secrets=dataclasses.replace(
        ctx.secrets, dkim_keys=ring[sign],
        dkim_keyring={s: ring[s] for s in spam.dkim.plan(ctx.settings).selectors})), ring


@pytest.mark.parametrize("now,signing,files", [
    ("2026-12-01T00:00:00Z", "mail", ("mail",)),
    ("2026-12-26T00:00:00Z", "mail", ("mail", "mail-g1")),      # next key staged, unused
    ("2027-01-02T00:00:00Z", "mail-g1", ("mail", "mail-g1")),   # previous kept in its grace
    ("2027-01-09T00:00:00Z", "mail-g1", ("mail-g1",)),          # previous key file dropped
])
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
    script = render("rspamd/deploy.sh.j2", password_file="", password_sum="", controller_inc="",
                    key_dir=str(key_dir), prune_keys=True, signing_conf=str(conf),
                    signing_selector=spam.dkim.plan(ctx.settings).signing.selector,
                    domains=ctx.settings.domains, ttl=ctx.settings.dns.ttl)
    lines = script.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith('current=""'))
    end = next(i for i in range(start + 4, len(lines)) if lines[i] == "fi")
    # As every step runs (mailstack/bundle.py).
    return "set -euo pipefail\nlog() { echo \"$*\" >&2; }\n" + "\n".join(lines[start:end + 1]) + "\necho switched\n"


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
    ctx, _ = _rotating_ctx("2027-01-02T00:00:00Z")          # mail-g1 signs
    ttl = ctx.settings.dns.ttl
    r = _run_guard(ctx, tmp_path, current="mail", key_age=10)
    assert r.returncode == 1 and "switched" not in r.stdout
    assert ("refusing to sign with DKIM selector mail-g1 (now mail): the key for example.org "
            "was published 10s ago") in r.stderr
    assert f"less than the record's TTL ({ttl}s); run the deploy (pulumi up) again in" in r.stderr
    # published a TTL ago (the publish window's run): switches
    assert _run_guard(ctx, tmp_path, current="mail", key_age=ttl + 5).stdout == "switched\n"
    # already signing with it, or a fresh host: nothing to guard
    assert _run_guard(ctx, tmp_path, current="mail-g1", key_age=1).stdout == "switched\n"
    assert _run_guard(ctx, tmp_path / "fresh" if (tmp_path / "fresh").mkdir() is None else None,
                      current=None, key_age=1).stdout == "switched\n"
