# IMAPSieve (mailstack): a message moved or copied out of Junk is ham, unless it goes to
# the Trash (throwing spam away says nothing new about it).
require ["vnd.dovecot.pipe", "copy", "imapsieve", "environment", "variables"];

if environment :matches "imap.mailbox" "*" {
  set "mailbox" "${1}";
}
if string :is "${mailbox}" ["Trash", "Junk"] {
  stop;
}
pipe :copy "rspamd-learn" ["ham"];
