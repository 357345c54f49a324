"""Throwaway self-signed certificate pairs (fullchain.pem, privkey.pem) for the daemons."""

from __future__ import annotations

import subprocess
from pathlib import Path


def rsa_pair(d: Path, cn: str = "mx1.example.org") -> None:
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
            "-keyout",
            d / "privkey.pem",
            "-out",
            d / "fullchain.pem",
        ],
        check=True,
        capture_output=True,
    )


def ec_pair(d: Path, cn: str, *, san: bool = False) -> None:
    """P-256; san: with the name and 127.0.0.1 as subjectAltName (for clients that verify)."""
    d.mkdir(parents=True, exist_ok=True)
    ext = ["-addext", f"subjectAltName=DNS:{cn},IP:127.0.0.1"] if san else []
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "2",
            "-subj",
            f"/CN={cn}",
            *ext,
            "-keyout",
            str(d / "privkey.pem"),
            "-out",
            str(d / "fullchain.pem"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
