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

from mailstack import dns, resolver, web
from tests.conftest import make_context, settings_from
from tests.test_mx import _cert


def _site(ctx, root: Path, listen: str | None = None) -> Path:
    _cert(root / "tls")
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
    check.write_text(Path("/etc/nginx/nginx.conf").read_text()
                     .replace("/etc/nginx/sites-enabled/", f"{site.parent}/"))
    r = subprocess.run(["nginx", "-t", "-c", check], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    site.write_text(site.read_text().replace("location / {", "location / "))
    assert subprocess.run(["nginx", "-t", "-c", check], capture_output=True).returncode != 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def nginx(ctx, tmp_path):
    port = _free_port()
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
    p = subprocess.Popen(["nginx", "-c", main], start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
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
    c.request(method, path, body="<Autodiscover/>" if method == "POST" else None,
              headers={"Host": host})
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
        assert (imap.findtext("hostname"), imap.findtext("port"), imap.findtext("socketType")) == \
            ("imap.example.org", "993", "SSL")
        smtp = {(s.findtext("port"), s.findtext("socketType"), s.findtext("hostname"))
                for s in provider.findall("outgoingServer")}
        assert smtp == {("465", "SSL", "smtp.example.org"), ("587", "STARTTLS", "smtp.example.org")}

        status, _, body = _get(nginx, f"autodiscover.{d}", "/autodiscover/autodiscover.xml", "POST")
        assert status == 200 and "<Server>imap.example.org</Server>" in body
    assert _get(nginx, "mta-sts.example.org", "/etc/passwd")[0] == 404


def test_web_only_on_the_web_host(ctx):
    assert web.bundle(ctx, ctx.hosts["imap"]).files == ()
    assert web.bundle(ctx, ctx.hosts["mx2"]).files == ()
    assert set(web.server_names(ctx)) >= {"mta-sts.example.net", "autoconfig.example.org"}


# --------------------------------------------------------------------------- unbound

@pytest.mark.parametrize("forward_to", [[], ["192.0.2.53", "2001:db8::53"]])
def test_unbound_accepts_rendered_config(forward_to, tmp_path):
    ctx = make_context(settings_from(resolver={"forwardTo": forward_to}))
    conf = tmp_path / "mailstack.conf"
    conf.write_text(resolver.bundle(ctx, ctx.hosts["mx1"]).file(resolver.CONF).content)
    r = subprocess.run(["unbound-checkconf", conf], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    for ip in forward_to:
        assert f"forward-addr: {ip}" in conf.read_text()
    conf.write_text(conf.read_text() + "  no-such-option: yes\n")
    assert subprocess.run(["unbound-checkconf", conf], capture_output=True).returncode != 0
