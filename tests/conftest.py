"""Shared fixtures: the example stack's settings, and a deploy Context with fixed fake
addresses and freshly generated (test-only) secrets."""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mailstack import hosts as H  # noqa: E402
from mailstack.context import Context, Secrets  # noqa: E402
from mailstack.settings import load_settings  # noqa: E402

# The real-daemon fixtures that several modules use (`dovecot`, `pebble`), one home each.
pytest_plugins = ["tests.daemons.dovecot", "tests.daemons.pebble"]

EXAMPLE_STACK = ROOT / "config" / "Pulumi.dev.yaml"

# Documentation ranges: never routed, so a rendering bug can't point anywhere real.
FAKE_ADDRESSES = {
    "mx1": H.Address("198.51.100.11", "2001:db8:11::1"),
    "imap": H.Address("198.51.100.12", "2001:db8:12::1"),
    "mx2": H.Address("198.51.100.13", "2001:db8:13::1"),
}


def stack_config(path: Path = EXAMPLE_STACK, **overrides) -> dict[str, str]:
    """A stack file's config as Pulumi hands it to the program: JSON strings for objects."""
    raw = yaml.safe_load(path.read_text())["config"]
    raw.update({f"mailstack:{k}": v for k, v in overrides.items()})
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in raw.items()}


def settings_from(**overrides):
    return load_settings(stack_config(**overrides))


@cache
def _rsa_key() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    ).decode()


# bcrypt of "correct horse battery staple" (cost 10); test-only.
TEST_PASSWORD = "correct horse battery staple"
TEST_HASH = "$2b$10$Ukq4vC1Sg6HXL3IC06A6q.uTAMjgORikXr.pQl0wKI/w7vsi9hLg."


def make_context(settings, addresses=None) -> Context:
    hs = H.hosts(settings)
    addrs = addresses or {r: FAKE_ADDRESSES[r] for r in hs}
    secrets = Secrets(
        replication_password="test-replication-Pw0rd",
        lookup_password="test-lookup-Pw0rd",
        quota_password="test-quota-Pw0rd",
        rspamd_controller_password="test-rspamd-Pw0rd",
        redis_password="test-redis-Pw0rd",
        srs_key="test-srs-Key0123456789",
        dkim_keys={d: _rsa_key() for d in settings.domains},
        user_hashes={u.address: u.password_hash or TEST_HASH for u in settings.users},
        backup_passwords={r: f"test-backup-{r}-Pw0rd" for r in hs},
        backup_keys={r: ed25519_openssh(f"backup-{r}")[0] for r in hs},
        backup_manager_key=ed25519_openssh("backup-keys")[0],
    )
    return Context(settings, hs, addrs, secrets, storage_box={"server": "u1.your-storagebox.de", "username": "u1"})


@cache
def ed25519_openssh(name: str) -> tuple[str, str]:
    """(private key, public key line) in OpenSSH format; test-only, fresh per run."""
    from cryptography.hazmat.primitives import serialization as ser
    from cryptography.hazmat.primitives.asymmetric import ed25519

    key = ed25519.Ed25519PrivateKey.generate()
    priv = key.private_bytes(ser.Encoding.PEM, ser.PrivateFormat.OpenSSH, ser.NoEncryption()).decode()
    pub = key.public_key().public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode()
    return priv, f"{pub} {name}"


@pytest.fixture
def settings():
    return settings_from()


@pytest.fixture
def single_settings():
    return settings_from(topology="single")


@pytest.fixture
def ctx(settings):
    return make_context(settings)


@pytest.fixture
def single_ctx(single_settings):
    return make_context(single_settings)
