"""Rspamd on the MX hosts: spam verdicts for inbound mail (both MXes), DKIM signing of
submitted mail (mx1 only, where the keys are)."""

from __future__ import annotations

from . import dkim, redis
from . import hosts as H
from .bundle import Bundle, File
from .context import Context
from .templates import read, render

LOCAL_D = "/etc/rspamd/local.d"
KEY_DIR = "/var/lib/rspamd/dkim"
CONTROLLER_INC = f"{LOCAL_D}/worker-controller.inc"
CONTROLLER_PORT = 11334
# The normal worker, which scans (smtpd's filter-rspamd asks it; loopback only).
NORMAL_PORT = 11333
# override.d: replaces the packaged secure_ip list instead of adding to it.
CONTROLLER_OVERRIDE = "/etc/rspamd/override.d/worker-controller.inc"
# Staged only, never installed: the script hashes it (see cloud-init/rspamd/deploy.sh.j2).
PASSWORD_FILE = "/run/mailstack-secrets/rspamd-controller-password"
PASSWORD_SUM = "/var/lib/mailstack/rspamd-controller-password.sha256"


def runs_rspamd(host: H.Host) -> bool:
    return host.runs(H.MX) or host.runs(H.BACKUP_MX)


# Symbols of our own rules (cloud-init/rspamd/): the ratelimit note and the From check.
RATELIMIT_SYMBOL = "MAILSTACK_RATELIMITED"
FROM_SYMBOL = "MAILSTACK_FROM_NOT_SENDER"
# Loaded by Rspamd after its own rules (rules/rspamd.lua: $LOCAL_CONFDIR/local.d/rspamd.lua).
LOCAL_LUA = f"{LOCAL_D}/rspamd.lua"


def learners(ctx: Context, host: H.Host) -> list[H.Host]:
    """The other hosts that teach this Rspamd's Bayes through its controller: the IMAP
    host (Junk moves, Dovecot IMAPSieve), when it isn't this one."""
    if redis.bayes_host(ctx).role != host.role:
        return []
    return [h for h in ctx.hosts.values() if h.role != host.role and h.runs(H.IMAP)]


def controller_address(ctx: Context, host: H.Host) -> str:
    """Where the IMAP host `host` sends learns: mx1's controller, on loopback when mx1
    is the IMAP host too."""
    mx1 = redis.bayes_host(ctx)
    return f"{'127.0.0.1' if mx1.role == host.role else mx1.private_ip}:{CONTROLLER_PORT}"


def controller_override(ctx: Context, host: H.Host) -> str:
    bind = [f"localhost:{CONTROLLER_PORT}"]
    if learners(ctx, host):
        # Only the IMAP host may reach it there (firewall.PRIVATE); it still needs the password.
        bind.append(f"{host.private_ip}:{CONTROLLER_PORT}")
    return render("rspamd/worker-controller.override.inc.j2", bind=bind)


def redis_files(ctx: Context, host: H.Host) -> list[File]:
    """Rspamd's Redis settings; they hold the Redis password, so only _rspamd reads them."""
    pw = redis.check_password(ctx.secrets.redis_password)
    return [
        File(
            f"{LOCAL_D}/redis.conf",
            render("rspamd/redis.conf.j2", port=redis.PORT, password=pw),
            0o640,
            "root",
            "_rspamd",
            secret=True,
        ),
        File(
            f"{LOCAL_D}/classifier-bayes.conf",
            render(
                "rspamd/classifier-bayes.conf.j2",
                server=redis.bayes_server(ctx, host),
                password=pw,
                min_learns=ctx.settings.spam.bayes_min_learns,
            ),
            0o640,
            "root",
            "_rspamd",
            secret=True,
        ),
    ]


def postmaster(ctx: Context) -> str:
    return f"postmaster@{ctx.settings.primary_domain}"


def submission_files(ctx: Context, host: H.Host) -> list[File]:
    """Only where users submit mail: outbound limits, the postmaster's note when one is
    reached, and the header From check."""
    return [
        File(
            f"{LOCAL_D}/ratelimit.conf",
            render("rspamd/ratelimit.conf.j2", limits=ctx.settings.limits, symbol=RATELIMIT_SYMBOL),
        ),
        File(
            f"{LOCAL_D}/metadata_exporter.conf",
            render(
                "rspamd/metadata_exporter.conf.j2",
                symbol=RATELIMIT_SYMBOL,
                helo=host.fqdn,
                mail_from=f"mailer-daemon@{host.fqdn}",
                mail_to=postmaster(ctx),
            ),
        ),
        File(LOCAL_LUA, render("rspamd/from-check.lua.j2", symbol=FROM_SYMBOL)),
    ]


def key_path(domain: str, selector: str) -> str:
    return f"{KEY_DIR}/{domain}.{selector}.key"


def dkim_signing_conf(ctx: Context) -> str:
    s = ctx.settings
    return render(
        "rspamd/dkim_signing.conf.j2", selector=dkim.plan(s).signing.selector, key_dir=KEY_DIR, domains=s.domains
    )


def keyring(ctx: Context) -> dict[str, dict[str, str]]:
    """selector -> domain -> private key PEM: a key file on mx1 for every generation whose
    record is published, none for a retired one (the step deletes those)."""
    plan = dkim.plan(ctx.settings)
    ring = dict(ctx.secrets.dkim_keyring) or {plan.signing.selector: ctx.secrets.dkim_keys}
    out = {}
    for sel in plan.selectors:
        if sel not in ring:
            raise ValueError(f"no DKIM keys for selector {sel}, which the schedule publishes")
        out[sel] = {d: ring[sel][d] for d in ctx.settings.domains}
    return out


def bundle(ctx: Context, host: H.Host) -> Bundle:
    if not runs_rspamd(host):
        return Bundle()
    files = [
        File(CONTROLLER_OVERRIDE, controller_override(ctx, host)),
        *redis_files(ctx, host),
        File(f"{LOCAL_D}/actions.conf", read("rspamd/actions.conf")),
        File(f"{LOCAL_D}/greylist.conf", read("rspamd/greylist.conf")),
        File(f"{LOCAL_D}/milter_headers.conf", read("rspamd/milter_headers.conf")),
        File(f"{LOCAL_D}/options.inc", render("rspamd/options.inc.j2", settings=ctx.settings)),
        File(PASSWORD_FILE, ctx.secrets.rspamd_controller_password, 0o600, secret=True),
    ]
    if host.runs(H.SUBMISSION):
        files += submission_files(ctx, host)
        files.append(File(f"{LOCAL_D}/dkim_signing.conf", dkim_signing_conf(ctx)))
        for sel, keys in keyring(ctx).items():
            for domain, pem in keys.items():
                files.append(File(key_path(domain, sel), pem, 0o640, "root", "_rspamd", secret=True))
    script = render(
        "rspamd/deploy.sh.j2",
        password_file=PASSWORD_FILE,
        password_sum=PASSWORD_SUM,
        controller_inc=CONTROLLER_INC,
        key_dir=KEY_DIR,
        # Only where keys are: any other key file there is a retired generation's.
        prune_keys=host.runs(H.SUBMISSION),
        signing_selector=dkim.plan(ctx.settings).signing.selector if host.runs(H.SUBMISSION) else "",
        signing_conf=f"{LOCAL_D}/dkim_signing.conf",
        domains=ctx.settings.domains,
        ttl=ctx.settings.dns.ttl,
    )
    # Redis first: Rspamd's (re)load connects to it with the password.
    return redis.bundle(ctx, host) + Bundle(tuple(files), script)
