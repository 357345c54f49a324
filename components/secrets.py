"""Every secret the stack needs, generated once and kept encrypted in Pulumi state.

Nothing here is ever read from or written to a file: the values only flow into the deploy
steps' stdin (a secret input) and into the secret `initialPasswords` output.
"""

from __future__ import annotations

import pulumi
import pulumi_random as random
import pulumi_tls as tls

from mailstack import backup, dkim
from mailstack.context import Secrets
from mailstack.settings import Settings


def _password(name: str, length: int, parent: pulumi.Resource) -> random.RandomPassword:
    # Letters and digits only: the values end up in libpq conninfo strings, .pgpass and
    # shell-quoted config, where specials would need escaping in every one of them.
    return random.RandomPassword(
        name,
        length=length,
        special=False,
        min_lower=1,
        min_upper=1,
        min_numeric=1,
        opts=pulumi.ResourceOptions(parent=parent),
    )


class StackSecrets(pulumi.ComponentResource):
    deploy_key: tls.PrivateKey
    dkim_keys: dict[str, tls.PrivateKey]
    dkim_generations: dict[str, dict[str, tls.PrivateKey]]
    initial_passwords: dict[str, random.RandomPassword]
    backup_keys: dict[str, tls.PrivateKey]
    backup_manager_key: tls.PrivateKey | None
    value: pulumi.Output[Secrets]

    def __init__(self, name: str, settings: Settings, opts: pulumi.ResourceOptions | None = None):
        super().__init__("mailstack:index:StackSecrets", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        replication = _password("replication-password", 32, self)
        lookup = _password("lookup-password", 32, self)
        quota = _password("quota-password", 32, self)
        rspamd = _password("rspamd-controller-password", 32, self)
        redis = _password("redis-password", 32, self)
        srs = _password("srs-key", 32, self)  # OpenSMTPD's SRS secret (mailstack/smtpd.py)
        # The stack's own SSH identity for the deploy steps; admins' keys stay theirs.
        self.deploy_key = tls.PrivateKey("deploy-key", algorithm="ED25519", opts=child)
        # One key per domain and per DKIM generation the rotation schedule publishes now
        # (mailstack/dkim.py): a new generation's key appears with its record, a retired
        # one's leaves state with its record. Generation 0 (no rotation) keeps the name
        # `dkim-<domain>`, so turning rotation on keeps the key that signs today.
        keys = dkim.plan(settings)
        self.dkim_generations = {
            g.selector: {
                d: tls.PrivateKey(
                    f"dkim-{d}" if g.number == 0 else f"dkim-{d}-g{g.number}",
                    algorithm="RSA",
                    rsa_bits=2048,
                    opts=child,
                )
                for d in settings.domains
            }
            for g in keys.published
        }
        self.dkim_keys = self.dkim_generations[keys.signing.selector]
        self._signing_selector = keys.signing.selector
        self.initial_passwords = {
            u.address: _password(f"user-{u.address}", 24, self) for u in settings.users if u.password_hash is None
        }
        hashes: dict[str, pulumi.Input[str]] = {
            u.address: pulumi.Output.secret(u.password_hash) for u in settings.users if u.password_hash is not None
        }
        hashes.update({a: p.bcrypt_hash for a, p in self.initial_passwords.items()})
        # One restic repository per data host, each with its own password and SSH key:
        # a host can read and write its own backups only through its own secrets.
        backed_up = backup.hosts(settings)
        backup_passwords = {r: _password(f"backup-password-{r}", 40, self) for r in backed_up}
        self.backup_keys = {r: tls.PrivateKey(f"backup-key-{r}", algorithm="ED25519", opts=child) for r in backed_up}
        # The Storage Box's own key: it is created with it, and the `backup-keys` step logs
        # in with it to write the box's authorized_keys (new or rotated host keys).
        self.backup_manager_key = (
            tls.PrivateKey("backup-keys-key", algorithm="ED25519", opts=child)
            if backup.manages_keys(settings) and backed_up
            else None
        )

        self.value = pulumi.Output.secret(
            pulumi.Output.all(
                replication=replication.result,
                lookup=lookup.result,
                quota=quota.result,
                rspamd=rspamd.result,
                redis=redis.result,
                srs=srs.result,
                dkim={d: k.private_key_pem for d, k in self.dkim_keys.items()},
                keyring={s: {d: k.private_key_pem for d, k in ks.items()} for s, ks in self.dkim_generations.items()},
                hashes=hashes,
                backup_passwords={r: p.result for r, p in backup_passwords.items()},
                backup_keys={r: k.private_key_openssh for r, k in self.backup_keys.items()},
                backup_manager_key=(self.backup_manager_key.private_key_openssh if self.backup_manager_key else ""),
                deploy_public_key=self.deploy_key.public_key_openssh,
            ).apply(
                lambda v: Secrets(
                    replication_password=v["replication"],
                    lookup_password=v["lookup"],
                    quota_password=v["quota"],
                    rspamd_controller_password=v["rspamd"],
                    redis_password=v["redis"],
                    srs_key=v["srs"],
                    dkim_keys=dict(v["dkim"]),
                    dkim_keyring={s: dict(ks) for s, ks in v["keyring"].items()},
                    user_hashes=dict(v["hashes"]),
                    backup_passwords=dict(v["backup_passwords"]),
                    backup_keys=dict(v["backup_keys"]),
                    backup_manager_key=v["backup_manager_key"],
                    deploy_public_key=v["deploy_public_key"],
                )
            )
        )
        self.register_outputs({})

    @property
    def dkim_public_pems(self) -> pulumi.Output[dict[str, str]]:
        return pulumi.Output.from_input({d: k.public_key_pem for d, k in self.dkim_keys.items()})

    @property
    def dkim_published_pems(self) -> pulumi.Output[dict[str, dict[str, str]]]:
        """selector -> domain -> public key of the generations published beside the
        signing one (the next before it signs, the previous during its grace)."""
        return pulumi.Output.from_input(
            {
                s: {d: k.public_key_pem for d, k in ks.items()}
                for s, ks in self.dkim_generations.items()
                if s != self._signing_selector
            }
        )

    @property
    def backup_public_keys(self) -> pulumi.Output[dict[str, str]]:
        return pulumi.Output.from_input({r: k.public_key_openssh for r, k in self.backup_keys.items()})

    @property
    def storage_box_keys(self) -> pulumi.Output[list[str]]:
        """The keys a Storage Box is created with: its own, then the hosts'."""
        own = [self.backup_manager_key.public_key_openssh] if self.backup_manager_key else []
        return pulumi.Output.all(*own, *(k.public_key_openssh for _, k in sorted(self.backup_keys.items()))).apply(
            lambda keys: [k.strip() for k in keys]
        )

    @property
    def initial_passwords_output(self) -> pulumi.Output[dict[str, str]]:
        # Output.all() of nothing is a list; keep the output a mapping.
        return pulumi.Output.secret(pulumi.Output.from_input({a: p.result for a, p in self.initial_passwords.items()}))
