"""The lab's settings (the example stack plus lab/stack.yaml), its addresses, and its
own secrets: generated per run, kept in STATE with mode 0600, never printed."""

from __future__ import annotations

import json
import secrets as pysecrets
import subprocess
from pathlib import Path

import yaml

from mailstack import hosts as H
from mailstack.context import Context, Secrets
from mailstack.settings import load_settings

from . import net
from .util import ROOT, STATE, write_private

EXAMPLE_STACK = ROOT / "config" / "Pulumi.dev.yaml"
OVERLAY = Path(__file__).resolve().parent / "stack.yaml"
SECRETS_FILE = STATE / "secrets.json"


def stack_config(**overrides) -> dict[str, str]:
    raw = yaml.safe_load(EXAMPLE_STACK.read_text())["config"]
    overlay = yaml.safe_load(OVERLAY.read_text())
    raw.update(overlay["config"])
    raw["mailstack:aliases"] = [*raw.get("mailstack:aliases", []), *overlay.get("extraAliases", [])]
    raw["mailstack:backup"] = _backup_settings(raw.get("mailstack:backup", {}))
    raw.update({f"mailstack:{k}": v for k, v in overrides.items()})
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def _backup_settings(base: dict) -> dict:
    """The lab's storage host as the Storage Box the stack would create (target
    `storagebox`, what Hetzner gets), its host key pinned once it exists."""
    from . import internet

    st = internet.storage()
    out = {**base, "target": "storagebox"}
    if st.host_key.with_suffix(".pub").exists():
        out["knownHosts"] = [st.known_hosts_line()]
    return out


def settings(**overrides):
    return load_settings(stack_config(**overrides))


OVERRIDES_FILE = STATE / "overrides.json"


def running_settings(**extra):
    """The settings of the lab that is up: `lab up --topology ...` records its overrides."""
    recorded = json.loads(OVERRIDES_FILE.read_text()) if OVERRIDES_FILE.exists() else {}
    return settings(**{**recorded, **extra})


def addresses(s) -> dict[str, H.Address]:
    return {r: H.Address(net.public_v4(r), net.public_v6(r)) for r in H.hosts(s)}


def _rsa_pem() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL, serialization.NoEncryption()
    ).decode()


def _ed25519_openssh() -> str:
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    return (
        ed25519.Ed25519PrivateKey.generate()
        .private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption())
        .decode()
    )


def storage_box_creation_keys(data: dict) -> list[str]:
    """The keys the lab's box starts with: only its own. Every host key then reaches it
    through the `backup-keys` step, as a key added after the box was created would."""
    from mailstack import backup

    return [backup.public_openssh(data["backup_manager_key"], backup.MANAGER_COMMENT)]


def storage_box(s) -> dict[str, str] | None:
    """What the stack's Storage Box resource would report: the lab storage host."""
    from . import internet
    from . import storage as LS

    if s.backup.target != "storagebox":
        return None
    return {"server": internet.storage().listen, "username": LS.USER}


def sha512_crypt(password: str) -> str:
    # stdin, so the password never shows in a process list
    return subprocess.run(
        ["openssl", "passwd", "-6", "-stdin"], input=password + "\n", capture_output=True, text=True, check=True
    ).stdout.strip()


def load_or_make_secrets(s, extra_users: tuple[str, ...] = ()) -> dict:
    data = json.loads(SECRETS_FILE.read_text()) if SECRETS_FILE.exists() else {}
    tok = lambda: pysecrets.token_urlsafe(24)
    data.setdefault("replication_password", tok())
    data.setdefault("lookup_password", tok())
    data.setdefault("quota_password", tok())
    data.setdefault("rspamd_controller_password", tok())
    data.setdefault("redis_password", tok())
    data.setdefault("srs_key", tok())
    dkim = data.setdefault("dkim_keys", {})
    for d in s.domains:
        if d not in dkim:
            dkim[d] = _rsa_pem()
    # Rotated DKIM generations (mailstack/dkim.py), made when the schedule first publishes
    # them, as the stack's keys are; generation 0 is dkim_keys.
    from mailstack import dkim as K

    gens = data.setdefault("dkim_generations", {})
    for g in K.plan(s).published:
        if g.number:
            for d in s.domains:
                if d not in gens.setdefault(g.selector, {}):
                    gens[g.selector][d] = _rsa_pem()
    from mailstack import backup

    bpw = data.setdefault("backup_passwords", {})
    bkeys = data.setdefault("backup_keys", {})
    for role in backup.hosts(s):
        bpw.setdefault(role, tok())
        if role not in bkeys:
            bkeys[role] = _ed25519_openssh()
    if "backup_manager_key" not in data:
        data["backup_manager_key"] = _ed25519_openssh()
    pw = data.setdefault("passwords", {})
    hashes = data.setdefault("hashes", {})
    for addr in [u.address for u in s.users] + list(extra_users):
        if addr not in pw:
            pw[addr] = tok()
            hashes[addr] = sha512_crypt(pw[addr])
    write_private(SECRETS_FILE, json.dumps(data))
    return data


def dkim_keyring(s, data: dict) -> dict[str, dict[str, str]]:
    """selector -> domain -> private key of every DKIM generation the schedule publishes."""
    from mailstack import dkim as K

    return {
        g.selector: {d: (data["dkim_generations"][g.selector] if g.number else data["dkim_keys"])[d] for d in s.domains}
        for g in K.plan(s).published
    }


def dkim_public(s, data: dict) -> dict[str, str]:
    """domain -> the p= value its DKIM record publishes (from the run's private keys)."""
    from mailstack import dkim as K
    from mailstack import dns

    ring = dkim_keyring(s, data)[K.plan(s).signing.selector]
    return {d: dns.dkim_public_from_private(ring[d]) for d in s.domains}


def dkim_published(s, data: dict) -> dict[str, dict[str, str]]:
    """selector -> domain -> p= of the generations published beside the signing one."""
    from mailstack import dkim as K
    from mailstack import dns

    signing = K.plan(s).signing.selector
    return {
        sel: {d: dns.dkim_public_from_private(pem) for d, pem in keys.items()}
        for sel, keys in dkim_keyring(s, data).items()
        if sel != signing
    }


def context(s, data: dict | None = None) -> Context:
    data = data or load_or_make_secrets(s)
    sec = Secrets(
        replication_password=data["replication_password"],
        lookup_password=data["lookup_password"],
        quota_password=data["quota_password"],
        rspamd_controller_password=data["rspamd_controller_password"],
        redis_password=data["redis_password"],
        srs_key=data["srs_key"],
        dkim_keys=dkim_keyring(s, data)[_signing(s)],
        dkim_keyring=dkim_keyring(s, data),
        user_hashes={u.address: data["hashes"][u.address] for u in s.users},
        backup_passwords=dict(data.get("backup_passwords", {})),
        backup_keys=dict(data.get("backup_keys", {})),
        backup_manager_key=data.get("backup_manager_key", ""),
    )
    return Context(s, H.hosts(s), addresses(s), sec, storage_box=storage_box(s))


def _signing(s) -> str:
    from mailstack import dkim as K

    return K.plan(s).signing.selector


def password(address: str) -> str:
    return json.loads(SECRETS_FILE.read_text())["passwords"][address]
