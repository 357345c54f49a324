#!/bin/sh
# Installed by mailstack. OpenSMTPD 7.x reports "link-auth|<session>|<result>|<user>",
# but opensmtpd-filter-rspamd 0.1.7 reads the two fields the other way round, never sees
# "pass", and so never tells rspamd who logged in: authenticated mail went out unsigned.
# Swap them on the way in; every other line passes through untouched.
sed -u -e 's/^\(report|0\.[7-9]|[^|]*|smtp-in|link-auth|[^|]*\)|\([^|]*\)|\(.*\)$/\1|\3|\2/' \
  | exec /usr/libexec/opensmtpd/filter-rspamd "$@"
