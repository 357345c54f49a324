"""Pebble (the ACME test server) on loopback, with pebble-challtestsrv for its DNS and a
plain HTTP server in nginx's place for HTTP-01."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from contextlib import ExitStack
from pathlib import Path

import pytest

from tests.daemons.certs import ec_pair
from tests.daemons.ports import free_port


def _wait_port(port: int, proc: subprocess.Popen, log: Path) -> None:
    for _ in range(100):
        if proc.poll() is not None:
            raise RuntimeError(f"exited early: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} never opened: {log.read_text()}")


@pytest.fixture
def pebble(tmp_path):
    """Pebble on loopback; pebble-challtestsrv answers every A query with 127.0.0.1, and a
    plain HTTP server plays nginx's port-80 site (serving what certbot writes to the
    webroot inside the step's overlay)."""
    for tool in ("pebble", "pebble-challtestsrv", "certbot", "unshare"):
        if not shutil.which(tool):
            pytest.skip(f"{tool} is not installed")
    if os.geteuid() != 0:
        pytest.skip("needs root for the mount namespace")
    d = tmp_path / "pebble"
    ec_pair(d, "localhost", san=True)
    acme, dns, http = free_port(), free_port(), free_port()
    webroot = tmp_path / "var-up" / "www" / "acme"
    webroot.mkdir(parents=True)
    (d / "config.json").write_text(
        json.dumps(
            {
                "pebble": {
                    "listenAddress": f"127.0.0.1:{acme}",
                    "managementListenAddress": f"127.0.0.1:{free_port()}",
                    "certificate": str(d / "fullchain.pem"),
                    "privateKey": str(d / "privkey.pem"),
                    "httpPort": http,
                    "tlsPort": free_port(),
                    "ocspResponderURL": "",
                    "externalAccountBindingRequired": False,
                }
            }
        )
    )
    env = dict(os.environ, PEBBLE_VA_NOSLEEP="1", PEBBLE_WFE_NONCEREJECT="0")
    with ExitStack() as stack:

        def start(name, cmd, port, cwd=None):
            log = open(tmp_path / f"{name}.log", "w")
            stack.callback(log.close)
            p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd)
            stack.callback(p.wait, 10)
            stack.callback(p.kill)
            if port:
                _wait_port(port, p, tmp_path / f"{name}.log")

        start(
            "challtestsrv",
            [
                "pebble-challtestsrv",
                "-defaultIPv4",
                "127.0.0.1",
                "-defaultIPv6",
                "",
                "-dns01",
                f"127.0.0.1:{dns}",
                "-http01",
                "",
                "-https01",
                "",
                "-tlsalpn01",
                "",
                "-management",
                f"127.0.0.1:{free_port()}",
            ],
            None,
        )
        start("http", ["python3", "-m", "http.server", "--bind", "127.0.0.1", str(http)], http, cwd=webroot)
        start(
            "pebble",
            ["pebble", "-config", str(d / "config.json"), "-dnsserver", f"127.0.0.1:{dns}", "-strict=false"],
            acme,
        )
        yield f"https://127.0.0.1:{acme}/dir", d / "fullchain.pem"
