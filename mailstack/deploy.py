"""The deploy steps: what runs on which server, in which order, after cloud-init.

A step is plain data (name, host, what it depends on, whether it needs public DNS) plus a
pure `render(ctx) -> Bundle`. The structure depends on the settings alone, so Pulumi can
declare one `remote.Command` per step up front and fill in the contents once addresses
and secrets are known; the local lab walks the same list in the same order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import backup, cloudinit, hardening, postgresql, services, tls
from . import hosts as H
from .bundle import Bundle
from .context import Context, Secrets  # noqa: F401  (re-exported: what a step's render gets)
from .settings import Settings

# How a step's program is run as root on its host, with the program on stdin (Pulumi's
# remote.Command over SSH and the lab's nsenter both use exactly this). Written to a 0600
# file first so a tool inside the step that reads stdin (psql, apt) can't swallow the rest
# of the program, as it could with `bash -s`.
RUN_PROGRAM = (
    'umask 077; f=$(mktemp /run/mailstack-step.XXXXXX) && trap \'rm -f "$f"\' EXIT && cat >"$f" && bash "$f" </dev/null'
)


@dataclass(frozen=True)
class Step:
    name: str
    host: str  # role of the host it runs on
    title: str
    render: Callable[[Context], Bundle] = field(compare=False, repr=False)
    depends_on: tuple[str, ...] = ()
    needs_dns: bool = False  # runs only after the public DNS records exist


def plan(settings: Settings) -> list[Step]:
    """Every step, in an order that satisfies depends_on (a valid serial order)."""

    hs = H.hosts(settings)
    primary = H.find(hs, H.DB_PRIMARY)
    steps: list[Step] = []
    for role in hs:
        steps.append(Step(f"wait-{role}", role, f"wait for cloud-init on {role}", cloudinit.wait_bundle))
        steps.append(
            Step(
                f"host-{role}",
                role,
                f"firewall, SSH and updates on {role}",
                lambda ctx, h=hs[role]: hardening.bundle(ctx, h),
                (f"wait-{role}",),
            )
        )
    steps.append(
        Step(
            "postgres-primary",
            primary.role,
            f"PostgreSQL primary on {primary.role}",
            lambda ctx, h=primary: postgresql.primary_bundle(ctx, h),
            (f"wait-{primary.role}",),
        )
    )
    backed_up = backup.hosts(settings)
    keys: tuple[str, ...] = ()
    if backup.manages_keys(settings) and backed_up:
        steps.append(
            Step(
                "backup-keys",
                primary.role,
                "the backup target's authorized keys",
                backup.keys_bundle,
                (f"wait-{primary.role}",),
            )
        )
        keys = ("backup-keys",)
    # A fresh primary restores its database (if backups hold one) before the settings
    # are synced into it, and a fresh mail store its mail before Dovecot takes any.
    if primary.role in backed_up:
        steps.append(_backup_step(backed_up[primary.role], ("postgres-primary", *keys)))
    steps.append(
        Step(
            "mail-sync",
            primary.role,
            "sync domains, users and aliases",
            postgresql.sync_bundle,
            ("postgres-primary", *((f"backup-{primary.role}",) if primary.role in backed_up else ())),
        )
    )
    for h in hs.values():
        if h.runs(H.DB_REPLICA):
            steps.append(
                Step(
                    f"postgres-replica-{h.role}",
                    h.role,
                    f"PostgreSQL replica on {h.role}",
                    lambda ctx, h=h: postgresql.replica_bundle(ctx, h),
                    (f"wait-{h.role}", "postgres-primary"),
                )
            )
    for h in hs.values():
        db_step = "postgres-primary" if h.runs(H.DB_PRIMARY) else f"postgres-replica-{h.role}"
        if h.role in backed_up and h.role != primary.role:
            steps.append(_backup_step(h, (f"wait-{h.role}", db_step, *keys)))
        after = (f"backup-{h.role}",) if h.role in backed_up else ()
        steps.append(
            Step(
                f"services-{h.role}",
                h.role,
                f"mail services on {h.role}",
                lambda ctx, h=h: services.bundle(ctx, h),
                (f"wait-{h.role}", db_step, *after),
            )
        )
    for h in hs.values():
        steps.append(
            Step(
                f"certificates-{h.role}",
                h.role,
                f"ACME certificates for {h.role}",
                lambda ctx, h=h: tls.certificates_bundle(ctx, h),
                (f"services-{h.role}",),
                needs_dns=True,
            )
        )
    _check_order(steps)
    return steps


def _backup_step(h: H.Host, depends_on: tuple[str, ...]) -> Step:
    return Step(
        f"backup-{h.role}",
        h.role,
        f"backups of {h.role} (restore if fresh)",
        lambda ctx, h=h: backup.bundle(ctx, h),
        depends_on,
    )


def _check_order(steps: list[Step]) -> None:
    seen: set[str] = set()
    for s in steps:
        missing = [d for d in s.depends_on if d not in seen]
        if missing:
            raise AssertionError(f"step {s.name} depends on {missing}, not declared before it")
        if s.name in seen:
            raise AssertionError(f"duplicate step {s.name}")
        seen.add(s.name)
