#!/usr/bin/env bash
# Installs everything the tests and the lab need on a Debian 12 machine: the real
# daemons (so rendered config is checked by the same versions the servers run),
# the lab tooling, and the pinned Python environment in .venv.
# Idempotent: a stamp file keyed on this script and requirements.txt skips work.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"

stamp_dir=/var/lib/mailstack-setup
key=$(cat scripts/setup-host.sh requirements.txt 2>/dev/null | sha256sum | cut -c1-16)

if [ "$(id -u)" != 0 ]; then
  echo "setup-host: run as root (apt-get install is needed)" >&2
  exit 1
fi

if [ ! -e "$stamp_dir/apt-$key" ]; then
  # OpenSMTPD 6.8 in bookworm cannot do server-side TLS; 7.4 comes from backports.
  cat > /etc/apt/sources.list.d/mailstack-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # Several checkouts may set up at once (worktrees): wait for dpkg's lock instead of failing.
  apt_wait=(-o DPkg::Lock::Timeout=900)
  apt-get "${apt_wait[@]}" update -q
  # The host only needs the binaries; its postinst scripts must not start daemons
  # that would bind 25/143/5432 on the test machine.
  restore_policy=""
  if [ -e /usr/sbin/policy-rc.d ]; then
    cp -a /usr/sbin/policy-rc.d /usr/sbin/policy-rc.d.mailstack-saved
    restore_policy=1
  fi
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
  chmod 755 /usr/sbin/policy-rc.d
  trap 'if [ -n "$restore_policy" ]; then mv /usr/sbin/policy-rc.d.mailstack-saved /usr/sbin/policy-rc.d; else rm -f /usr/sbin/policy-rc.d; fi' EXIT
  echo "opensmtpd opensmtpd/mailname string localhost" | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get "${apt_wait[@]}" install -y -q --no-install-recommends \
    opensmtpd/bookworm-backports \
    opensmtpd-extras opensmtpd-filter-rspamd opensmtpd-filter-senderscore \
    rspamd redis-server fail2ban python3-systemd \
    dovecot-core dovecot-imapd dovecot-lmtpd dovecot-pgsql dovecot-sieve dovecot-managesieved \
    postgresql-15 postgresql-client-15 \
    nftables unbound nginx-light certbot cloud-init \
    knot knot-dnsutils pebble swaks apt-cacher-ng \
    systemd-container debootstrap iproute2 openssl ca-certificates \
    python3-venv make git curl procps psmisc dpkg-dev whois \
    restic openssh-server openssh-client
  mkdir -p "$stamp_dir"
  touch "$stamp_dir/apt-$key"
fi

if [ ! -x .venv/bin/python ] || [ ! -e ".venv/.req-$key" ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
  rm -f .venv/.req-*
  touch ".venv/.req-$key"
fi
echo "setup-host: ready"
