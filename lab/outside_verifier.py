"""The outside MTA's verifier: Debian's OpenDKIM (verify mode) and OpenDMARC (which checks
SPF itself, `SPFSelfValidate`) as milters of its Postfix, as a receiving site on the
internet runs them. They judge every message that reaches mx.outside.example.com's
public addresses (the mail our stack sends out) and write their verdict into the stored
copy as Authentication-Results headers with the authserv-id mx.outside.example.com
(RFC 8601); `verdict()` reads it back. Mail the scenarios hand to Postfix on loopback
(their inbound mail) is not judged: that listener has no milters (outside_mta.MASTER_CF).

Both run in the outside MTA's chroot the way Postfix's master does: started by hand, no
systemd, resolving at the lab's DNS (knot), stopped by the PID they wrote.
"""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
import signal
import time
from pathlib import Path

from . import net
from .util import NETNS, run, wait_until

# The packages beside postfix in the outside MTA's cached layer (outside_mta.LAYER_PACKAGES).
# dbconfig-no-thanks: opendmarc depends on "dbconfig-mysql | dbconfig-no-thanks", and apt
# would take the first, a MySQL client it has no use for (no report database here).
PACKAGES = ("opendkim", "opendmarc", "dbconfig-no-thanks")
DKIM_PORT = 8891  # on the lab namespace's loopback, as Debian's examples
DMARC_PORT = 8893
MILTERS = f"inet:127.0.0.1:{DKIM_PORT}, inet:127.0.0.1:{DMARC_PORT}"
PIDFILES = {"opendkim": "/run/opendkim/opendkim.pid", "opendmarc": "/run/opendmarc/opendmarc.pid"}
METHODS = ("spf", "dkim", "dmarc")


def opendkim_conf(authserv_id: str) -> str:
    return "\n".join(
        [
            "# The lab's outside verifier (lab/outside_verifier.py): verify only, never sign.",
            "Mode v",
            f"Socket inet:{DKIM_PORT}@127.0.0.1",
            f"AuthservID {authserv_id}",
            # An unsigned message says so (dkim=none) instead of carrying no verdict at all.
            "AlwaysAddARHeader yes",
            # The lab's DNS, not libunbound's own recursion from the real root servers.
            f"Nameservers {net.INTERNET_V4}",
            # The verdict is the record: a bad or missing signature is noted, never refused.
            "On-BadSignature accept",
            "On-NoSignature accept",
            "On-KeyNotFound accept",
            "UserID opendkim",
            f"PidFile {PIDFILES['opendkim']}",
            "UMask 007",
            "Syslog no",
            "",
        ]
    )


def opendmarc_conf(authserv_id: str) -> str:
    return "\n".join(
        [
            "# The lab's outside verifier (lab/outside_verifier.py).",
            f"Socket inet:{DMARC_PORT}@127.0.0.1",
            f"AuthservID {authserv_id}",
            # OpenDKIM's result above is the DKIM input; nobody else's header counts.
            f"TrustedAuthservIDs {authserv_id}",
            # SPF checked here (libspf2, the lab's DNS through resolv.conf), and any SPF claim
            # a message already carries ignored.
            "SPFSelfValidate true",
            "SPFIgnoreResults true",
            "RejectFailures false",
            "FailureReports false",
            "PublicSuffixList /usr/share/publicsuffix/public_suffix_list.dat",
            "UserID opendmarc",
            f"PidFile {PIDFILES['opendmarc']}",
            "UMask 007",
            "Syslog false",
            "",
        ]
    )


def _chroot(root: Path, *argv: str, check: bool = True):
    return run(["ip", "netns", "exec", NETNS, "chroot", str(root), *argv], check=check, capture=True)


def _pid(root: Path, daemon: str) -> int | None:
    try:
        return int((root / PIDFILES[daemon].lstrip("/")).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def start(root: Path, authserv_id: str) -> None:
    """Write both configs into the chroot and start the two daemons (they fork)."""
    (root / "etc/opendkim.conf").write_text(opendkim_conf(authserv_id))
    (root / "etc/opendmarc.conf").write_text(opendmarc_conf(authserv_id))
    stop(root)
    for daemon in PIDFILES:
        _chroot(root, "install", "-d", "-o", daemon, "-g", daemon, "-m", "0750", os.path.dirname(PIDFILES[daemon]))
    _chroot(root, "opendkim", "-x", "/etc/opendkim.conf")
    _chroot(root, "opendmarc", "-c", "/etc/opendmarc.conf")

    def listening() -> bool:
        r = run(["ip", "netns", "exec", NETNS, "ss", "-Hltn"], capture=True, check=False)
        return all(f"127.0.0.1:{p} " in r.stdout for p in (DKIM_PORT, DMARC_PORT))

    wait_until(listening, 20, "OpenDKIM and OpenDMARC on the outside MTA")


def stop(root: Path) -> None:
    """End both daemons by the PIDs they wrote (nothing else in the namespace is touched)."""
    for daemon in PIDFILES:
        pid = _pid(root, daemon)
        if pid is None:
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(50):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        (root / PIDFILES[daemon].lstrip("/")).unlink(missing_ok=True)


_COMMENT = re.compile(r"\([^()]*\)")


def verdict(raw: bytes, authserv_id: str) -> dict[str, str]:
    """{'spf': ..., 'dkim': ..., 'dmarc': ...} as the verifiers recorded them in a stored
    copy: the topmost result of each method in the Authentication-Results headers whose
    authserv-id is ours (the milters insert theirs above anything the message carried).
    A method without a result is 'missing'."""
    msg = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(raw)
    found: dict[str, str] = {}
    for value in msg.get_all("Authentication-Results") or []:
        text = _COMMENT.sub(" ", " ".join(str(value).split()))
        ident, _, results = text.partition(";")
        ident = (ident.split() or [""])[0]
        if ident.lower() != authserv_id.lower():
            continue
        for res in results.split(";"):
            m = re.match(r"\s*([a-z-]+)\s*=\s*([a-z]+)", res, re.I)
            if m and m.group(1).lower() in METHODS:
                found.setdefault(m.group(1).lower(), m.group(2).lower())
    return {k: found.get(k, "missing") for k in METHODS}
