"""Lab hosts as systemd-nspawn containers: a shared read-only root file system under a
per-host overlay, a NoCloud seed (user-data unchanged, meta-data, network-config as
Hetzner's metadata would give), booted inside the lab network namespace.

Each host runs under a small supervisor process (`python -m lab _supervise ROLE`) that
recreates its network links and boots it again when the container reboots (exit 133),
the way systemd-nspawn@.service does on a real machine.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from . import net
from .util import NETNS, ROOT, STATE, pid_alive, run, wait_until

HOSTS_DIR = Path(os.environ.get("MAILSTACK_LAB_HOSTS", "/var/lib/mailstack-lab/hosts"))


def host_dir(role: str) -> Path:
    return HOSTS_DIR / role


def merged(role: str) -> Path:
    return host_dir(role) / "merged"


def prepare(
    role: str,
    rootfs: Path,
    fqdn: str,
    user_data: str,
    network_config: dict,
    ca_pems: dict[str, str],
    files: dict[str, str] | None = None,
) -> None:
    """Overlay + seed for a fresh host. ca_pems: lab CAs the host must trust (Pebble's);
    files: path -> content of other lab-only files (the lab root's hints and key)."""
    d = host_dir(role)
    for sub in ("upper", "work", "merged", "seed"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={rootfs},upperdir={d / 'upper'},workdir={d / 'work'}",
            str(d / "merged"),
        ]
    )
    seed = d / "seed"
    (seed / "user-data").write_text(user_data)
    (seed / "meta-data").write_text(
        yaml.safe_dump({"instance-id": f"lab-{role}-{int(time.time())}", "local-hostname": fqdn})
    )
    (seed / "network-config").write_text(yaml.safe_dump(network_config, sort_keys=False))
    m = d / "merged"
    for name, pem in ca_pems.items():
        p = m / "usr/local/share/ca-certificates" / f"{name}.crt"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(pem)
    if ca_pems:
        run(["chroot", str(m), "update-ca-certificates"], capture=True)
    for path, text in (files or {}).items():
        p = m / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def network_config(role: str, private_ip: str, prefixlen: int = 24) -> dict:
    return {
        "version": 2,
        "ethernets": {
            "eth0": {
                "match": {"macaddress": net.mac(role, "pub")},
                "set-name": "eth0",
                "addresses": [f"{net.public_v4(role)}/24", f"{net.public_v6(role)}/64"],
                "gateway4": net.INTERNET_V4,
                "gateway6": net.INTERNET_V6,
                "nameservers": {"addresses": [net.INTERNET_V4]},
            },
            "enp7s0": {
                "match": {"macaddress": net.mac(role, "priv")},
                "set-name": "enp7s0",
                "addresses": [f"{private_ip}/{prefixlen}"],
            },
        },
    }


# ---------------------------------------------------------------- running


def _pidfile(role: str) -> Path:
    return STATE / f"supervisor-{role}.pid"


def start(role: str) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    console = host_dir(role) / "console.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "_supervise", role],
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
        stdout=open(console, "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _pidfile(role).write_text(str(proc.pid))


# This machine runs no systemd: without a cgroup of its own, every container's systemd
# would see the whole tree as its root and share system.slice/<unit> with the other
# hosts (and other labs): killing a unit's control group then failed ("Input/output
# error") and processes a unit left behind (nginx's workers after kill -9 of the master)
# kept its ports. Each host's container gets its own cgroup in the hierarchies systemd
# uses; systemd-nspawn roots the container's cgroup namespace there.
CGROUP_HIERARCHIES = (Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))


def cgroup_dirs(role: str) -> list[Path]:
    return [h / "mailstack-lab" / NETNS / role for h in CGROUP_HIERARCHIES if (h / "cgroup.procs").exists()]


def _enter_own_cgroup(role: str) -> None:
    for d in cgroup_dirs(role):
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text(str(os.getpid()))


def remove_cgroups(role: str) -> None:
    """Empty cgroups a host left behind, deepest first (rmdir is how cgroups go)."""
    for d in cgroup_dirs(role):
        if d.exists():
            for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                try:
                    sub.rmdir()
                except OSError:
                    pass
            for empty in (d, d.parent, d.parent.parent):  # role, lab, mailstack-lab
                try:
                    empty.rmdir()
                except OSError:
                    break


def supervise(role: str) -> int:
    """Foreground: boot the container, and boot it again after a reboot."""
    stop = False
    _enter_own_cgroup(role)

    def on_term(signum, frame):
        nonlocal stop
        stop = True
        if child is not None and child.poll() is None:
            child.send_signal(signal.SIGTERM)  # nspawn powers the container off cleanly

    child = None
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    quick_failures = 0
    while True:
        started = time.monotonic()
        pub, priv = net.add_host_links(role)
        # Not `ip netns exec`: its fresh /sys hides the cgroup mounts nspawn needs. A
        # private mount namespace gets a read-only sysfs of the lab namespace (nspawn takes
        # a writable /sys as proof that udev runs, and there is no udev here to initialise
        # the links) with the machine's cgroup tree bound back under it.
        cg = STATE / f"cgroup-{role}"
        cg.mkdir(parents=True, exist_ok=True)
        inner = 'mount -t sysfs -o ro sysfs /sys && mount --rbind "$CG" /sys/fs/cgroup && exec "$@"'
        outer = (
            f'mount --rbind /sys/fs/cgroup "$CG" && exec nsenter --net=/run/netns/{NETNS} sh -c \'{inner}\' nspawn "$@"'
        )
        cmd = [
            "env",
            f"CG={cg}",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            outer,
            "nspawn",
            "systemd-nspawn",
            "-q",
            "-D",
            str(merged(role)),
            "--boot",
            "--register=no",
            "--keep-unit",
            "-M",
            role,
            f"--bind-ro={host_dir(role) / 'seed'}:/var/lib/cloud/seed/nocloud",
            f"--network-interface={pub}",
            f"--network-interface={priv}",
            "--resolv-conf=off",
            "--timezone=off",
            "--link-journal=no",
            "--console=pipe",
        ]
        child = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
        (STATE / f"nspawn-{role}.pid").write_text(str(child.pid))
        rc = child.wait()
        print(f"mailstack-lab: {role} container exited with {rc}", flush=True)
        if stop:
            return 0
        # Whatever the exit status, the host comes back unless the lab stopped it: nspawn
        # reports a reboot as a failure (not 133) when it can't move the renamed veths
        # back, and right after a poweroff it can fail at once while the kernel still
        # tears down the old namespace. Only a crash loop ends the supervisor.
        quick_failures = quick_failures + 1 if time.monotonic() - started < 10 else 0
        if quick_failures > 5:
            print(f"mailstack-lab: {role} keeps failing to start; giving up", flush=True)
            return 1
        time.sleep(1)


def running(role: str) -> bool:
    try:
        return pid_alive(int(_pidfile(role).read_text()))
    except (OSError, ValueError):
        return False


def leader(role: str) -> int:
    """PID (in our namespace) of the container's init."""
    nspawn = int((STATE / f"nspawn-{role}.pid").read_text())
    for pid in _descendants(nspawn):
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd" and os.readlink(
                f"/proc/{pid}/ns/pid"
            ) != os.readlink(f"/proc/{nspawn}/ns/pid"):
                return pid
        except OSError:
            continue
    raise LookupError(f"{role}: container init not found")


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(p))
    out, todo = [], [pid]
    while todo:
        c = children.get(todo.pop(), [])
        out += c
        todo += c
    return out


def exec_in(
    role: str,
    argv: list[str],
    *,
    input: str | None = None,
    check: bool = False,
    capture: bool = True,
    timeout: float | None = None,
) -> subprocess.CompletedProcess:
    cmd = [
        "nsenter",
        "-t",
        str(leader(role)),
        "-a",
        "env",
        "-i",
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME=/root",
        "LANG=C.UTF-8",
        *argv,
    ]
    return subprocess.run(
        cmd,
        input=input,
        text=True,
        check=check,
        timeout=timeout,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
    )


def sh(role: str, script: str, **kw) -> subprocess.CompletedProcess:
    return exec_in(role, ["bash", "-c", script], **kw)


def wait_booted(role: str, timeout: float = 120) -> None:
    def ok():
        r = exec_in(role, ["systemctl", "is-system-running"], timeout=10)
        return r.stdout.strip() in ("running", "degraded")

    wait_until(ok, timeout, f"{role} to boot")


def stop(role: str, timeout: float = 60) -> None:
    """Power the host off (nspawn turns SIGTERM into a clean shutdown)."""
    try:
        pid = int(_pidfile(role).read_text())
    except (OSError, ValueError):
        return
    if pid_alive(pid):
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if pid_alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            # nspawn's own children are in the group too; give the kernel a moment.
            time.sleep(0.5)
    _pidfile(role).unlink(missing_ok=True)


def teardown(role: str) -> None:
    stop(role, timeout=30)
    remove_cgroups(role)
    d = host_dir(role)
    m = d / "merged"
    if os.path.ismount(m):
        run(["umount", "-l", str(m)], check=False)
    if d.exists():
        run(["rm", "-rf", "--one-file-system", str(d)], check=False)
