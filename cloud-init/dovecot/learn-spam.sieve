# IMAPSieve (mailstack): a message moved or copied into Junk is spam; Rspamd's Bayes
# classifier on mx1 learns it (dovecot.py, the rspamd-learn program). :copy: learning never
# changes what the user did with the message.
require ["vnd.dovecot.pipe", "copy", "imapsieve"];

pipe :copy "rspamd-learn" ["spam"];
