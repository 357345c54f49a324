# Global sieve_before (mailstack), run first: a message whose Message-ID this user got
# within DUPLICATE_PERIOD is dropped. SMTP delivers at least once: when an LMTP session
# ends after Dovecot stored a message but before mx1 read the 250 (a shutdown, a crash,
# kill -9 of smtpd), mx1 delivers it again; this makes that second copy disappear.
# Pigeonhole records the ID only once the script's actions succeeded, so a delivery that
# failed is never mistaken for a duplicate. Mail without a Message-ID is never dropped.
require ["duplicate"];

if duplicate {
  discard;
  stop;
}
