"""Scan a TLS listener with sslyze and judge it against Mozilla's "intermediate" profile,
shared by the fast suite (tests/test_tls_profile.py and the daemon harnesses) and the
lab's `tls-profile` scenario.

Run as a script inside whatever network namespace reaches the listener:
    python -m lab.tls_scan IP PORT [--starttls smtp|sieve] [--name SNI]
prints {"TLSv1.2": ["TLS_ECDHE_...", ...], ...}: the suites the server accepted per
protocol version. sslyze knows SMTP's STARTTLS but not ManageSieve's, so for `sieve` a
local relay on 127.0.0.1 does the STARTTLS exchange for each of sslyze's connections and
then passes the bytes through untouched.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import sys
import threading
from pathlib import Path

from .forward import pipe

VERSIONS = ("SSLv2", "SSLv3", "TLSv1.0", "TLSv1.1", "TLSv1.2", "TLSv1.3")


def mozilla_intermediate() -> dict:
    """The intermediate configuration as sslyze ships it (Mozilla's JSON, not ours)."""
    import sslyze

    files = sorted((Path(sslyze.__file__).parent / "mozilla_tls_profile").glob("*.json"))
    return json.loads(files[-1].read_text())["configurations"]["intermediate"]


def _sieve_relay(target: tuple[str, int]) -> tuple[socket.socket, int]:
    """A listener on 127.0.0.1 that, per connection, reads the ManageSieve greeting, says
    STARTTLS, waits for OK and then relays raw bytes both ways."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)

    def handle(client: socket.socket) -> None:
        try:
            up = socket.create_connection(target, timeout=20)
            buf = b""
            while not re.search(rb"^OK", buf, re.M):  # greeting ends with OK
                chunk = up.recv(4096)
                if not chunk:
                    raise OSError("greeting cut off")
                buf += chunk
            up.sendall(b"STARTTLS\r\n")
            reply = up.recv(4096)
            if not reply.startswith(b"OK"):
                raise OSError(f"STARTTLS refused: {reply!r}")
            up.settimeout(None)
        except OSError:
            client.close()
            return
        threading.Thread(target=pipe, args=(client, up), daemon=True).start()
        threading.Thread(target=pipe, args=(up, client), daemon=True).start()

    def accept() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=handle, args=(c,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv, srv.getsockname()[1]


def scan(ip: str, port: int, starttls: str | None = None, name: str | None = None) -> dict[str, list[str]]:
    from sslyze import (
        ProtocolWithOpportunisticTlsEnum,
        ScanCommand,
        Scanner,
        ServerNetworkConfiguration,
        ServerNetworkLocation,
        ServerScanRequest,
        ServerScanStatusEnum,
    )

    relay = None
    if starttls == "sieve":
        relay, port = _sieve_relay((ip, port))
        ip = "127.0.0.1"
    commands = {
        "SSLv2": ScanCommand.SSL_2_0_CIPHER_SUITES,
        "SSLv3": ScanCommand.SSL_3_0_CIPHER_SUITES,
        "TLSv1.0": ScanCommand.TLS_1_0_CIPHER_SUITES,
        "TLSv1.1": ScanCommand.TLS_1_1_CIPHER_SUITES,
        "TLSv1.2": ScanCommand.TLS_1_2_CIPHER_SUITES,
        "TLSv1.3": ScanCommand.TLS_1_3_CIPHER_SUITES,
    }
    config = ServerNetworkConfiguration(
        tls_server_name_indication=name or ip,
        tls_opportunistic_encryption=ProtocolWithOpportunisticTlsEnum.SMTP if starttls == "smtp" else None,
        smtp_ehlo_hostname="tls-scan.mailstack.test" if starttls == "smtp" else None,
        network_timeout=10,
        network_max_retries=2,
    )
    request = ServerScanRequest(
        server_location=ServerNetworkLocation(hostname=name or ip, port=port, ip_address=ip),
        network_configuration=config,
        scan_commands=set(commands.values()),
    )
    scanner = Scanner(per_server_concurrent_connections_limit=4)
    scanner.queue_scans([request])
    try:
        (result,) = list(scanner.get_results())
    finally:
        if relay:
            relay.close()
    if result.scan_status != ServerScanStatusEnum.COMPLETED:
        raise RuntimeError(f"{ip}:{port}: no TLS connection: {result.connectivity_error_trace}")
    out = {}
    for version, command in commands.items():
        attempt = getattr(result.scan_result, command.value)
        if attempt.result is None:
            raise RuntimeError(f"{ip}:{port}: {version} scan failed: {attempt.error_trace}")
        out[version] = sorted(c.cipher_suite.name for c in attempt.result.accepted_cipher_suites)
    return out


def problems(accepted: dict[str, list[str]], wide: bool = False) -> list[str]:
    """What keeps `accepted` from the intermediate profile (empty: it conforms). `wide`:
    port 25's opportunistic set, which must still refuse anything before TLS 1.2."""
    profile = mozilla_intermediate()
    out = []
    for version in VERSIONS:
        if version not in profile["tls_versions"] and accepted.get(version):
            out.append(f"{version} accepted: {accepted[version]}")
    for version in profile["tls_versions"]:
        if not accepted.get(version):
            out.append(f"{version} not offered")
    if not wide:
        allowed = set(profile["ciphers"]["iana"]) | set(profile["ciphersuites"])
        for suite in accepted.get("TLSv1.2", []):
            weak = re.search(r"_CBC_|_SHA$|CAMELLIA|ARIA", suite)
            if weak or suite not in allowed:
                out.append(f"TLSv1.2 suite outside intermediate: {suite}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ip")
    ap.add_argument("port", type=int)
    ap.add_argument("--starttls", choices=("smtp", "sieve"))
    ap.add_argument("--name")
    a = ap.parse_args(argv)
    json.dump(scan(a.ip, a.port, a.starttls, a.name), sys.stdout)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
