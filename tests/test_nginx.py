"""nginx site for MTA-STS and autoconfig: `nginx -t` the way the deploy script runs it,
then a real nginx on loopback answering over HTTPS; and unbound's config."""

from __future__ import annotations

import http.client
import os
import signal
import socket
import ssl
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from lab import tls_scan
from mailstack import dns, unbound
from mailstack import nginx as web
from tests.conftest import make_context, settings_from
from tests.daemons.certs import rsa_pair
from tests.daemons.knot import Knot
from tests.daemons.ports import free_port


def _site(ctx, root: Path, listen: str | None = None) -> Path:
    rsa_pair(root / "tls")
    b = web.bundle(ctx, ctx.hosts["mx1"])
    www = root / "www"
    www.mkdir()
    for f in b.files:
        if f.path.startswith(web.WEB_ROOT + "/"):
            (www / Path(f.path).name).write_text(f.content)
    conf = b.file(web.SITE).content
    conf = conf.replace(web.TLS_DIR, str(root / "tls")).replace(web.WEB_ROOT, str(www))
    if listen:
        conf = conf.replace("listen [::]:443 ssl http2;\n", "").replace("listen 443 ", f"listen {listen} ")
    site = root / "sites" / "mailstack-web"
    site.parent.mkdir()
    site.write_text(conf)
    return site


def test_nginx_accepts_site_next_to_the_packaged_config(ctx, tmp_path):
    site = _site(ctx, tmp_path)
    for other in Path("/etc/nginx/sites-enabled").iterdir():
        (site.parent / other.name).symlink_to(other.resolve())
    check = tmp_path / "nginx-check.conf"
    check.write_text(Path("/etc/nginx/nginx.conf").read_text().replace("/etc/nginx/sites-enabled/", f"{site.parent}/"))
    r = subprocess.run(["nginx", "-t", "-c", check], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    site.write_text(site.read_text().replace("location / {", "location / "))
    assert subprocess.run(["nginx", "-t", "-c", check], capture_output=True).returncode != 0


@pytest.fixture
def nginx(ctx, tmp_path):
    port = free_port()
    site = _site(ctx, tmp_path, listen=f"127.0.0.1:{port}")
    main = tmp_path / "nginx.conf"
    main.write_text(f"""user root;
daemon off;
pid {tmp_path}/nginx.pid;
error_log {tmp_path}/error.log;
events {{}}
http {{
    include /etc/nginx/mime.types;
    client_body_temp_path {tmp_path}/body;
    include {site};
}}
""")
    p = subprocess.Popen(
        ["nginx", "-c", main], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 1).close()
                break
            except OSError:
                assert p.poll() is None, (tmp_path / "error.log").read_text()
                time.sleep(0.05)
        yield port
    finally:
        os.killpg(p.pid, signal.SIGTERM)
        p.wait(10)


def _get(port: int, host: str, path: str, method: str = "GET") -> tuple[int, str, str]:
    tls = ssl.create_default_context()
    tls.check_hostname = False
    tls.verify_mode = ssl.CERT_NONE
    c = http.client.HTTPSConnection("127.0.0.1", port, context=tls, timeout=10)
    c.request(method, path, body="<Autodiscover/>" if method == "POST" else None, headers={"Host": host})
    r = c.getresponse()
    return r.status, r.getheader("Content-Type", ""), r.read().decode()


def test_mta_sts_and_autoconfig_over_https(ctx, nginx):
    for d in ctx.settings.domains:
        status, ctype, body = _get(nginx, f"mta-sts.{d}", "/.well-known/mta-sts.txt")
        assert status == 200 and ctype.startswith("text/plain")
        assert body == dns.mta_sts_policy(ctx.settings)
        assert "mx: mx1.example.org\r\n" in body and "mx: mx2.example.org\r\n" in body

        status, ctype, body = _get(nginx, f"autoconfig.{d}", f"/mail/config-v1.1.xml?emailaddress=a@{d}")
        assert status == 200 and "xml" in ctype
        provider = ET.fromstring(body).find("emailProvider")
        assert d in [e.text for e in provider.findall("domain")]
        imap = provider.find("incomingServer")
        assert (imap.findtext("hostname"), imap.findtext("port"), imap.findtext("socketType")) == (
            "imap.example.org",
            "993",
            "SSL",
        )
        smtp = {
            (s.findtext("port"), s.findtext("socketType"), s.findtext("hostname"))
            for s in provider.findall("outgoingServer")
        }
        assert smtp == {("465", "SSL", "smtp.example.org"), ("587", "STARTTLS", "smtp.example.org")}

        status, _, body = _get(nginx, f"autodiscover.{d}", "/autodiscover/autodiscover.xml", "POST")
        assert status == 200 and "<Server>imap.example.org</Server>" in body
    assert _get(nginx, "mta-sts.example.org", "/etc/passwd")[0] == 404


def test_https_offers_only_the_intermediate_profile(nginx):
    """sslyze against the real nginx: TLS 1.2 and 1.3 only, and on 1.2 only Mozilla's
    intermediate suites (no CBC, SHA-1, CAMELLIA or ARIA)."""
    accepted = tls_scan.scan("127.0.0.1", nginx, name="mta-sts.example.org")
    assert tls_scan.problems(accepted) == [], accepted


def test_web_only_on_the_web_host(ctx):
    assert web.bundle(ctx, ctx.hosts["imap"]).files == ()
    assert web.bundle(ctx, ctx.hosts["mx2"]).files == ()
    assert set(web.server_names(ctx)) >= {"mta-sts.example.net", "autoconfig.example.org"}


# --------------------------------------------------------------------------- unbound


@pytest.mark.parametrize("forward_to", [[], ["192.0.2.53", "2001:db8::53"]])
def test_unbound_accepts_rendered_config(forward_to, tmp_path):
    ctx = make_context(settings_from(resolver={"forwardTo": forward_to}))
    conf = tmp_path / "mailstack.conf"
    conf.write_text(unbound.bundle(ctx, ctx.hosts["mx1"]).file(unbound.CONF).content)
    r = subprocess.run(["unbound-checkconf", conf], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for ip in forward_to:
        assert f"forward-addr: {ip}" in conf.read_text()
    conf.write_text(conf.read_text() + "  no-such-option: yes\n")
    assert subprocess.run(["unbound-checkconf", conf], capture_output=True).returncode != 0


def _unbound_ptr(conf_text: str, knot_port: int, tmp_path) -> str:
    """Run the rendered unbound (ports moved off 53) forwarding to a knot on loopback;
    return the rcode of a PTR query for a documentation-range address."""
    import time as _time

    import dns.message
    import dns.query
    import dns.rcode
    import dns.reversename

    port = free_port()
    conf_text = (
        conf_text.replace("port: 53", f"port: {port}")
        .replace("forward-addr: 127.0.0.1", f"forward-addr: 127.0.0.1@{knot_port}")
        .replace("interface: ::1\n", "")
    )
    (tmp_path / "mailstack.conf").write_text(conf_text)
    (tmp_path / "unbound.conf").write_text(
        f'server:\n  chroot: ""\n  username: ""\n  directory: "{tmp_path}"\n'
        f'  pidfile: "{tmp_path}/pid"\n  use-syslog: no\n  logfile: ""\n'
        f'include: "{tmp_path}/mailstack.conf"\n'
    )
    proc = subprocess.Popen(
        ["unbound", "-d", "-c", tmp_path / "unbound.conf"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    try:
        q = dns.message.make_query(dns.reversename.from_address("198.51.100.25"), "PTR")
        deadline = _time.monotonic() + 15
        while True:
            try:
                r = dns.query.udp(q, "127.0.0.1", port=port, timeout=1)
                return dns.rcode.to_text(r.rcode()) + " " + " ".join(rd.to_text() for rr in r.answer for rd in rr)
            except (OSError, dns.exception.Timeout):
                if _time.monotonic() > deadline or proc.poll() is not None:
                    raise AssertionError(
                        f"unbound did not answer: {proc.stderr.read() if proc.poll() is not None else ''}"
                    )
                _time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(10)


def test_forwarding_resolver_asks_upstream_for_private_reverse_zones(tmp_path):
    """unbound answers reverse lookups for private and documentation ranges itself
    ("no such name") unless told otherwise; with forwarders, smtpd's rDNS filters need
    the forwarder's answer (the lab's outside host lives in 198.51.100.0/24)."""
    zone = "100.51.198.in-addr.arpa"
    knot = Knot(
        {
            zone: f"$ORIGIN {zone}.\n$TTL 60\n@ IN SOA ns.lab.test. h.lab.test. 1 60 60 60 60\n"
            "@ IN NS ns.lab.test.\n25 IN PTR mx.outside.test.\n"
        }
    )
    knot.start()
    try:
        ctx = make_context(settings_from(resolver={"forwardTo": ["127.0.0.1"]}))
        rendered = unbound.bundle(ctx, ctx.hosts["mx1"]).file(unbound.CONF).content
        (tmp_path / "a").mkdir()
        assert _unbound_ptr(rendered, knot.port, tmp_path / "a") == "NOERROR mx.outside.test."
        # Control: without the unblock lines unbound answers by itself.
        blocked = rendered.replace("unblock-lan-zones: yes", "").replace("insecure-lan-zones: yes", "")
        (tmp_path / "b").mkdir()
        assert _unbound_ptr(blocked, knot.port, tmp_path / "b").startswith("NXDOMAIN")
    finally:
        knot.stop()
