#!/bin/bash
# certbot deploy hook (also run by the certificates step): puts the mailstack lineage
# where every daemon reads it and restarts what serves it. Copies instead of symlinks
# keep the daemons' paths and modes independent of certbot's archive layout.
# MAILSTACK_TLS_DIR exists for tests only.
set -euo pipefail
live=${RENEWED_LINEAGE:-/etc/letsencrypt/live/mailstack}
dst=${MAILSTACK_TLS_DIR:-/etc/mailstack/tls}
[ "$(basename "$live")" = mailstack ] || exit 0   # another lineage on this host
if [ ! -s "$live/fullchain.pem" ] || [ ! -s "$live/privkey.pem" ]; then
  echo "mailstack deploy hook: no certificate in $live yet" >&2
  exit 0
fi
if cmp -s "$live/fullchain.pem" "$dst/fullchain.pem" && cmp -s "$live/privkey.pem" "$dst/privkey.pem"; then
  exit 0
fi
install -d -m 0755 "$dst"
# Both files land before any daemon restarts, so none sees a key without its chain.
install -m 0600 "$live/privkey.pem" "$dst/.privkey.pem.new"
install -m 0644 "$live/fullchain.pem" "$dst/.fullchain.pem.new"
mv -f "$dst/.privkey.pem.new" "$dst/privkey.pem"
mv -f "$dst/.fullchain.pem.new" "$dst/fullchain.pem"
echo "mailstack deploy hook: installed the certificate from $live in $dst" >&2
for svc in opensmtpd dovecot nginx; do
  systemctl is-active --quiet "$svc" 2>/dev/null || continue
  case $svc in
    # smtpd reads its certificates only at start; it has no reload.
    opensmtpd) systemctl restart opensmtpd ;;
    *) systemctl reload "$svc" ;;
  esac
  echo "mailstack deploy hook: reloaded $svc" >&2
done
