# Global sieve_before (mailstack): Rspamd marks spam with `X-Spam: Yes`; it goes to
# Junk before any user script runs, so no user rule can drop it into the INBOX.
require ["fileinto", "mailbox"];

if header :is "X-Spam" "yes" {
  fileinto :create "Junk";
  stop;
}
