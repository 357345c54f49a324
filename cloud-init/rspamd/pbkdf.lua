-- Hashes the controller password with rspamd's own PBKDF, reading it from the file named
-- by $MAILSTACK_PWFILE: `rspamadm pw -p` would put the secret on a command line, and
-- without -p it insists on a terminal.
local f = assert(io.open(os.getenv("MAILSTACK_PWFILE")))
local password = f:read("*l")
f:close()
print(require("rspamd_cryptobox").pbkdf(password))
