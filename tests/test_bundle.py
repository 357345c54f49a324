"""The deploy-step program itself (bundle.py + cloud-init/deploy/prelude.sh), run for real
by bash against a temporary directory: staging, installing with modes and owners,
change detection and idempotency."""

from __future__ import annotations

import os
import stat
import subprocess

from mailstack.bundle import Bundle, File


def run(bundle: Bundle, name: str = "test") -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-s"], input=bundle.shell(name), capture_output=True, text=True, timeout=60)


def bundle_for(root, content="hello\n", script=None) -> Bundle:
    files = (
        File(f"{root}/etc/new/dir/app.conf", content, 0o640, "root", "daemon"),
        File(f"{root}/etc/new/secret.key", "s3cret\n", 0o600, secret=True),
    )
    script = script or f'if install_all {root}/; then echo "changed:$MAILSTACK_CHANGED"; else echo unchanged; fi'
    return Bundle(files, script)


def test_installs_files_with_modes_owners_and_open_parent_dirs(tmp_path):
    r = run(bundle_for(tmp_path))
    assert r.returncode == 0, r.stderr
    conf = tmp_path / "etc/new/dir/app.conf"
    assert conf.read_text() == "hello\n"
    st = conf.stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == 1  # daemon
    assert stat.S_IMODE((tmp_path / "etc/new/secret.key").stat().st_mode) == 0o600
    # The step runs with umask 077; daemons must still be able to enter new directories.
    for d in ("etc/new", "etc/new/dir"):
        assert stat.S_IMODE((tmp_path / d).stat().st_mode) == 0o755, d
    assert "changed:" in r.stdout and "app.conf" in r.stdout


def test_second_run_changes_nothing(tmp_path):
    assert run(bundle_for(tmp_path)).returncode == 0
    before = (tmp_path / "etc/new/dir/app.conf").stat().st_mtime_ns
    r = run(bundle_for(tmp_path))
    assert r.returncode == 0 and r.stdout.strip() == "unchanged", r.stdout + r.stderr
    assert (tmp_path / "etc/new/dir/app.conf").stat().st_mtime_ns == before


def test_mode_drift_is_repaired(tmp_path):
    assert run(bundle_for(tmp_path)).returncode == 0
    os.chmod(tmp_path / "etc/new/secret.key", 0o644)
    r = run(bundle_for(tmp_path))
    assert "secret.key" in r.stdout
    assert stat.S_IMODE((tmp_path / "etc/new/secret.key").stat().st_mode) == 0o600


def test_validation_failure_leaves_the_old_file(tmp_path):
    assert run(bundle_for(tmp_path)).returncode == 0
    conf = f"{tmp_path}/etc/new/dir/app.conf"
    check_then_install = (
        f'grep -q "^valid" "$(staged {conf})" || {{ log "rejected"; exit 1; }}\ninstall_all {tmp_path}/ || true\n'
    )
    r = run(bundle_for(tmp_path, "broken\n", check_then_install))
    assert r.returncode == 1 and "rejected" in r.stderr
    assert (tmp_path / "etc/new/dir/app.conf").read_text() == "hello\n"
    r = run(bundle_for(tmp_path, "valid\n", check_then_install))
    assert r.returncode == 0 and (tmp_path / "etc/new/dir/app.conf").read_text() == "valid\n"


def test_stage_is_removed_and_secrets_not_printed(tmp_path):
    r = run(bundle_for(tmp_path), "cleanup")
    assert r.returncode == 0
    assert "s3cret" not in r.stdout + r.stderr
    assert not [p for p in os.listdir("/run") if p.startswith("mailstack-stage.cleanup")]


def test_digest_follows_content_and_modes(tmp_path):
    a = bundle_for(tmp_path)
    assert a.digest() == bundle_for(tmp_path).digest()
    assert a.digest() != bundle_for(tmp_path, "other\n").digest()
    b = Bundle((File("/x", "1", 0o600),), "")
    assert b.digest() != Bundle((File("/x", "1", 0o644),), "").digest()
    assert a.secret and not b.secret


def _service_dir(tmp_path, name="svc"):
    """A directory a service account (nobody) owns, as postgres owns /etc/postgresql/15/main."""
    import pwd

    d = tmp_path / name
    d.mkdir()
    pw = pwd.getpwnam("nobody")
    os.chown(d, pw.pw_uid, pw.pw_gid)
    return d


def test_a_link_planted_in_a_service_directory_is_replaced_never_written_through(tmp_path):
    svc = _service_dir(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("root's own file\n")
    (svc / "app.conf").symlink_to(victim)
    b = Bundle((File(f"{svc}/app.conf", "victim\n", 0o640),), f"install_file {svc}/app.conf")
    r = run(b)
    assert r.returncode == 0, r.stderr
    assert victim.read_text() == "root's own file\n"
    assert not (svc / "app.conf").is_symlink() and (svc / "app.conf").read_text() == "victim\n"
    # Same content behind the link is still not "unchanged": the link goes.
    (svc / "app.conf").unlink()
    victim.write_text("victim\n")
    victim.chmod(0o640)
    (svc / "app.conf").symlink_to(victim)
    assert run(b).returncode == 0 and not (svc / "app.conf").is_symlink()


def test_a_linked_directory_planted_by_a_service_account_is_refused(tmp_path):
    """postgres could swap /etc/postgresql/15/main/conf.d for a link to /etc: the step
    must not write through it (as `mkdir -p`, `mktemp` and `cat >` would)."""
    svc = _service_dir(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (svc / "conf.d").symlink_to(elsewhere)
    r = run(Bundle((File(f"{svc}/conf.d/app.conf", "x\n"),), f"install_file {svc}/conf.d/app.conf"))
    assert r.returncode != 0 and "symbolic link" in r.stderr
    assert list(elsewhere.iterdir()) == []


def test_links_root_placed_are_followed(tmp_path):
    """Links in directories only root writes (Debian's merged /usr, /etc/alternatives)
    are the system's own and keep working."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    r = run(Bundle((File(f"{tmp_path}/link/app.conf", "ok\n"),), f"install_file {tmp_path}/link/app.conf"))
    assert r.returncode == 0, r.stderr
    assert (real / "app.conf").read_text() == "ok\n"
