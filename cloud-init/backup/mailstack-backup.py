#!/usr/bin/python3
"""mailstack backups with restic: `mailstack-backup` (run by mailstack-backup.service)
and `mailstack-restore [--snapshot ID] [--only mail|db|rspamd|ADDRESS]` (the same
program under another name). Rendered by mailstack/backup.py; its settings come from
config.json next to the repository password and SSH key (see docs/backup.md).

Never prints a secret: restic reads the password from a 0600 file, and the SSH key is
named by path only.
"""

import argparse
import datetime
import json
import os
import shutil
import subprocess
import sys
import time

CONFIG = os.environ.get("MAILSTACK_BACKUP_CONFIG", "/etc/mailstack/backup/config.json")
C = {}


def log(msg):
    print(f"mailstack-backup: {msg}", file=sys.stderr, flush=True)


def now():
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def target_environment():
    """An S3 target's credentials, from their 0600 file (never a command line)."""
    out = {}
    if C.get("env_file"):
        with open(C["env_file"]) as f:
            for line in f:
                name, sep, value = line.rstrip("\n").partition("=")
                if sep and name.startswith("AWS_"):
                    out[name] = value
    return out


def restic(*args, capture=False, check=True, stdout=None, stderr=None):
    env = dict(
        os.environ,
        RESTIC_REPOSITORY=C["repository"],
        RESTIC_PASSWORD_FILE=C["password_file"],
        RESTIC_CACHE_DIR=C["cache_dir"],
        **target_environment(),
    )
    out = subprocess.PIPE if capture else stdout
    r = subprocess.run(
        [*C["restic"], *args], env=env, stdout=out, stderr=stderr, text=capture or None, stdin=subprocess.DEVNULL
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"restic {args[0]} failed with exit status {r.returncode}")
    return r


def service(action, name):
    """Start/stop a unit if systemd manages it here; returns whether it was active."""
    unit = C["services"].get(name)
    if not unit:
        return False
    active = subprocess.run(["systemctl", "is-active", "-q", unit]).returncode == 0
    if action == "stop" and active:
        log(f"stopping {unit}")
        subprocess.run(["systemctl", "stop", unit], check=True)
    elif action == "start":
        log(f"starting {unit}")
        subprocess.run(["systemctl", "start", unit], check=True)
    return active


# ------------------------------------------------------------------ status file


def read_status():
    try:
        with open(C["status_file"]) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def write_status(**changes):
    st = read_status()
    st.update(changes, host=C["host"])
    os.makedirs(os.path.dirname(C["status_file"]), exist_ok=True)
    tmp = C["status_file"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(st, f, indent=2, sort_keys=True)
        f.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, C["status_file"])


# ------------------------------------------------------------------ backup


def dump_db(path):
    with open(path + ".tmp", "wb") as f:
        skip = [f"--exclude-table-data={t}" for t in C.get("db_exclude_data", [])]
        subprocess.run(
            [*C["as_postgres"], "pg_dump", "-Fc", *skip, "-d", C["db"]], stdout=f, check=True, stdin=subprocess.DEVNULL
        )
    os.replace(path + ".tmp", path)


def redis_env():
    """redis-cli's environment with the password from Redis's own config (REDISCLI_AUTH:
    never on a command line)."""
    env = dict(os.environ)
    try:
        with open(C["redis_conf"]) as f:
            for line in f:
                if line.startswith("requirepass "):
                    env["REDISCLI_AUTH"] = line.split(None, 1)[1].strip()
    except FileNotFoundError:
        pass
    return env


def dump_redis(path):
    subprocess.run(
        ["redis-cli", "--rdb", path + ".tmp"],
        check=True,
        stdout=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        env=redis_env(),
    )
    os.replace(path + ".tmp", path)


def backup():
    t0 = time.monotonic()
    write_status(last_run={"time": now(), "result": "running"})
    try:
        paths = []
        os.makedirs(C["dump_dir"], mode=0o700, exist_ok=True)
        if "db" in C["parts"]:
            dump_db(db_dump_path())
        if "rspamd" in C["parts"]:
            dump_redis(redis_dump_path())
        if "db" in C["parts"] or "rspamd" in C["parts"]:
            paths.append(C["dump_dir"])
        if "mail" in C["parts"]:
            paths.append(C["vmail"])
        args = [
            "backup",
            "--json",
            "--host",
            C["host"],
            "--tag",
            "mailstack",
            "--exclude",
            restore_staging(),
            "--exclude",
            os.path.join(C["vmail"], "lost+found"),
            *paths,
        ]
        r = restic(*args, capture=True, check=False)
        # 3: the snapshot exists but a file vanished while it was read (a message moved
        # by a client); the next run picks up the rest.
        if r.returncode not in (0, 3):
            raise RuntimeError(f"restic backup failed with exit status {r.returncode}")
        summary = {}
        for line in r.stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg.get("message_type") == "summary":
                summary = msg
        k = C["keep"]
        restic(
            "forget",
            "--host",
            C["host"],
            "--tag",
            "mailstack",
            "--prune",
            "--keep-daily",
            str(k["daily"]),
            "--keep-weekly",
            str(k["weekly"]),
            "--keep-monthly",
            str(k["monthly"]),
            capture=True,
        )
        checked = read_status().get("last_check", {})
        due = True
        if checked.get("result") == "ok":
            last = datetime.datetime.fromisoformat(checked["time"])
            due = datetime.datetime.now(datetime.UTC) - last > datetime.timedelta(days=C["check_every_days"])
        if due:
            rc = restic("check", capture=True, check=False).returncode
            write_status(last_check={"time": now(), "result": "ok" if rc == 0 else f"failed ({rc})"})
            if rc != 0:
                raise RuntimeError(f"restic check found problems (exit status {rc})")
        stats = json.loads(restic("stats", "--json", "--mode", "raw-data", capture=True).stdout)
        took = round(time.monotonic() - t0, 1)
        good = {
            "time": now(),
            "snapshot": summary.get("snapshot_id", ""),
            "seconds": took,
            "files": summary.get("total_files_processed"),
            "bytes": summary.get("total_bytes_processed"),
            "added_bytes": summary.get("data_added"),
            "repository_bytes": stats.get("total_size"),
            "complete": r.returncode == 0,
        }
        write_status(last_run={"time": good["time"], "result": "ok", "seconds": took}, last_success=good)
        log(f"snapshot {good['snapshot'][:8]} of {C['host']} in {took}s; repository {good['repository_bytes']} bytes")
        return 0
    except Exception as exc:
        write_status(
            last_run={
                "time": now(),
                "result": "failed",
                "error": str(exc)[:300],
                "seconds": round(time.monotonic() - t0, 1),
            }
        )
        log(f"backup failed: {exc}")
        return 1


def init():
    """Create the repository unless it exists (the deploy step runs this every time)."""
    if restic("cat", "config", capture=True, check=False, stderr=subprocess.DEVNULL).returncode == 0:
        return 0
    restic("init", capture=True)  # refuses to touch an existing repository
    log(f"repository for {C['host']} created")
    return 0


# ------------------------------------------------------------------ restore


def restore_staging():
    # On the mail store's own file system, so moving a restored mailbox in is a rename.
    return os.path.join(C["vmail"], ".mailstack-restore")


def db_dump_path():
    return os.path.join(C["dump_dir"], "mailstack.pgdump")


def redis_dump_path():
    return os.path.join(C["dump_dir"], "rspamd-redis.rdb")


def snapshots():
    out = restic("snapshots", "--json", "--host", C["host"], "--tag", "mailstack", capture=True).stdout
    return json.loads(out) or []


def base_name(name):
    return name.split(":2,", 1)[0]


def merge_mailbox(src, dst):
    """Bring back into dst what src has and dst lacks: messages (known by the unique part
    of their Maildir name, so one whose flags changed since is not doubled), folders,
    Sieve scripts. Nothing in dst is removed or overwritten. Returns messages added."""
    added = 0
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = os.path.normpath(os.path.join(dst, rel))
        if not os.path.isdir(target):
            shutil.copytree(root, target, symlinks=True)  # a whole folder that is gone
            added += sum(len(f) for r, _, f in os.walk(target) if os.path.basename(r) in ("cur", "new"))
            dirs[:] = []
            continue
        leaf = os.path.basename(root)
        if leaf in ("cur", "new"):
            folder = os.path.dirname(target)
            have = set()
            for sub in ("cur", "new"):
                try:
                    have.update(base_name(n) for n in os.listdir(os.path.join(folder, sub)))
                except FileNotFoundError:
                    pass
            for name in files:
                if base_name(name) not in have:
                    shutil.copy2(os.path.join(root, name), os.path.join(folder, "cur", name))
                    added += 1
        elif leaf != "tmp":
            for name in files:
                p = os.path.join(target, name)
                # Dovecot's own index and uidlist files stay: it rescans the folder.
                if not os.path.lexists(p):
                    shutil.copy2(os.path.join(root, name), p, follow_symlinks=False)
    uid = C["vmail_uid"]
    for root, dirs, files in os.walk(dst):
        for n in dirs + files:
            os.lchown(os.path.join(root, n), uid, uid)
    return added


def restore_mail(snap, address=None):
    stage = restore_staging()
    shutil.rmtree(stage, ignore_errors=True)
    os.makedirs(stage, mode=0o700)
    what = C["vmail"]
    if address:
        local, _, domain = address.lower().rpartition("@")
        what = os.path.join(C["vmail"], domain, local)
    restic("restore", snap, "--host", C["host"], "--target", stage, "--include", what)
    src_root = stage + C["vmail"]
    if address and not os.path.isdir(stage + what):
        shutil.rmtree(stage, ignore_errors=True)
        raise RuntimeError(f"snapshot {snap} holds no mailbox for {address}")
    was_active = False if address else service("stop", "dovecot")
    moved = merged = 0
    try:
        for domain in sorted(os.listdir(src_root)) if os.path.isdir(src_root) else []:
            dpath = os.path.join(src_root, domain)
            if not os.path.isdir(dpath) or domain.startswith("."):
                continue
            for local in sorted(os.listdir(dpath)):
                src, dst = os.path.join(dpath, local), os.path.join(C["vmail"], domain, local)
                if address and stage + what != src:
                    continue
                if not os.path.lexists(dst):
                    dom_dir = os.path.join(C["vmail"], domain)
                    if not os.path.isdir(dom_dir):
                        os.makedirs(dom_dir)
                        os.chown(dom_dir, C["vmail_uid"], C["vmail_uid"])
                    os.rename(src, dst)  # exact: UIDs, flags, indexes as they were
                    moved += 1
                else:
                    merged += merge_mailbox(src, dst)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if was_active:
            service("start", "dovecot")
    log(f"mail: {moved} mailbox(es) restored whole, {merged} message(s) put back into existing ones")


def restore_db(snap):
    path = db_dump_path() + ".restore"
    os.makedirs(C["dump_dir"], mode=0o700, exist_ok=True)
    with open(path, "wb") as f:
        restic("dump", "--host", C["host"], snap, db_dump_path(), stdout=f)
    was_active = service("stop", "smtpd")  # it holds lookup connections to the database
    try:
        subprocess.run(
            [
                *C["as_postgres"],
                "psql",
                "-X",
                "-q",
                "-d",
                "postgres",
                "-c",
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{C['db']}' AND pid <> pg_backend_pid()",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        # On stdin: the dump stays readable by root only.
        with open(path, "rb") as dump:
            subprocess.run(
                [
                    *C["as_postgres"],
                    "pg_restore",
                    "--clean",
                    "--if-exists",
                    "--create",
                    "--exit-on-error",
                    "-d",
                    "postgres",
                ],
                check=True,
                stdin=dump,
            )
    finally:
        os.unlink(path)
        if was_active:
            service("start", "smtpd")
    log(f"database {C['db']} restored")


def restore_redis(snap):
    path = C["redis_rdb"]
    was_active = service("stop", "redis")
    try:
        with open(path + ".restore", "wb") as f:
            restic("dump", "--host", C["host"], snap, redis_dump_path(), stdout=f)
        shutil.chown(path + ".restore", "redis", "redis")
        os.chmod(path + ".restore", 0o660)
        os.replace(path + ".restore", path)
    finally:
        if was_active:
            service("start", "redis")
    log("rspamd's redis data restored")


def store_empty():
    try:
        names = [n for n in os.listdir(C["vmail"]) if not n.startswith(".") and n != "lost+found"]
    except FileNotFoundError:
        return True
    return not names


def db_empty():
    r = subprocess.run(
        [
            *C["as_postgres"],
            "psql",
            "-X",
            "-Atq",
            "-d",
            C["db"],
            "-c",
            "SELECT (SELECT count(*) FROM domains) + (SELECT count(*) FROM users)",
        ],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    return r.returncode == 0 and r.stdout.strip() == "0"


def restore(argv):
    p = argparse.ArgumentParser(
        prog="mailstack-restore",
        description=(
            "Restore this host's data from its backup repository, in place. Mail is merged: "
            "what is missing comes back, nothing present is removed or doubled."
        ),
    )
    p.add_argument("--snapshot", default="latest", help="snapshot ID (default: the latest)")
    p.add_argument("--only", help="mail, db, rspamd or one mailbox address")
    p.add_argument(
        "--if-empty", action="store_true", help="only what is empty here (a fresh host); used by the deploy step"
    )
    p.add_argument("--list", action="store_true", help="list this host's snapshots")
    a = p.parse_args(argv)
    if a.list:
        for s in snapshots():
            print(s["short_id"], s["time"][:19], " ".join(s.get("paths", [])))
        return 0
    parts = list(C["parts"])
    address = None
    if a.only:
        if "@" in a.only:
            address, parts = a.only, ["mail"]
        elif a.only in parts:
            parts = [a.only]
        else:
            p.error(f"--only {a.only}: this host backs up {', '.join(parts)}; name one of them or a mailbox address")
        if address and "mail" not in C["parts"]:
            p.error("this host holds no mail")
    if a.if_empty:
        parts = [x for x in parts if (x == "mail" and store_empty()) or (x == "db" and db_empty())]
        if not parts:
            return 0
    if not snapshots():
        if a.if_empty:
            log("nothing to restore: the repository has no snapshot of this host yet")
            return 0
        raise SystemExit("mailstack-restore: the repository has no snapshot of this host")
    t0 = time.monotonic()
    log(f"restoring {', '.join(parts)}{' of ' + address if address else ''} from snapshot {a.snapshot}")
    if "db" in parts:
        restore_db(a.snapshot)
    if "rspamd" in parts:
        restore_redis(a.snapshot)
    if "mail" in parts:
        restore_mail(a.snapshot, address)
    took = round(time.monotonic() - t0, 1)
    write_status(
        last_restore={"time": now(), "snapshot": a.snapshot, "parts": parts, "address": address, "seconds": took}
    )
    log(f"restore done in {took}s")
    return 0


def main():
    with open(CONFIG) as f:
        C.update(json.load(f))
    os.umask(0o077)
    if os.path.basename(sys.argv[0]) == "mailstack-restore":
        return restore(sys.argv[1:])
    if sys.argv[1:2] == ["restore"]:
        return restore(sys.argv[2:])
    if sys.argv[1:] == ["init"]:
        return init()
    if sys.argv[1:] not in ([], ["run"]):
        raise SystemExit("usage: mailstack-backup [run|init] | mailstack-restore --help")
    return backup()


if __name__ == "__main__":
    sys.exit(main())
