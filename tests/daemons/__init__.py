"""Real-daemon test harnesses, one module per daemon, shared by the test modules.

- `ports`: `free_port`, `port_open`, `wait` (every harness's one copy of each);
- `certs`: throwaway self-signed pairs;
- `netns`: `Netns` (a server and a client network namespace joined by a veth pair) and
  `start_resolver_and_database`, the base every smtpd harness stands on;
- `unbound`: the namespace's resolver with the outside clients' rDNS;
- `postgres`: throwaway clusters on loopback (`Pg`) and inside a `Netns`;
- `smtpd`: OpenSMTPD staged from the rendered files, and SMTP clients (swaks);
- `rspamd`, `dovecot`, `knot`, `pebble`: the other daemons.
"""
