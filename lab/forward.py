"""TCP forwarders between this machine's namespace and the lab's, in one detached
process: the listening socket is made in one namespace, the outgoing ones in the other,
so no route or NAT ever joins the lab to the real network."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

from .netns import inside
from .util import ROOT, STATE

# (name, listen in lab?, listen addr, port, connect addr, port)
Spec = tuple[bool, str, int, str, int]


def start(name: str, specs: list[Spec]) -> None:
    STATE.mkdir(parents=True, exist_ok=True)
    args = [f"{'lab' if lab else 'host'},{la},{lp},{ca},{cp}" for lab, la, lp, ca, cp in specs]
    proc = subprocess.Popen(
        [sys.executable, "-m", "lab", "_forward", *args],
        cwd=str(ROOT),
        stdin=subprocess.DEVNULL,
        stdout=open(STATE / f"{name}.log", "ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    (STATE / f"{name}.pid").write_text(str(proc.pid))


def pipe(a: socket.socket, b: socket.socket) -> None:
    """Copy a to b until either end closes, then shut both down."""
    try:
        while data := a.recv(65536):
            b.sendall(data)
    except OSError:
        pass
    finally:
        for s in (a, b):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def _serve(srv: socket.socket, lab_listens: bool, addr: str, port: int) -> None:
    while True:
        conn, _ = srv.accept()
        try:
            if lab_listens:
                up = socket.create_connection((addr, port), timeout=10)
            else:
                with inside():
                    up = socket.create_connection((addr, port), timeout=10)
            up.settimeout(None)
        except OSError:
            conn.close()
            continue
        threading.Thread(target=pipe, args=(conn, up), daemon=True).start()
        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()


def main(args: list[str]) -> int:
    threads = []
    for a in args:
        where, la, lp, ca, cp = a.split(",")
        fam = socket.AF_INET6 if ":" in la else socket.AF_INET
        # A socket belongs to the namespace it is created in.
        if where == "lab":
            with inside():
                srv = socket.socket(fam)
        else:
            srv = socket.socket(fam)
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind((la, int(lp)))
        srv.listen(64)
        t = threading.Thread(target=_serve, args=(srv, where == "lab", ca, int(cp)), daemon=True)
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    return 0
