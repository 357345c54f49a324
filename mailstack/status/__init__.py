"""`mailstack status`: is the deployed mail system healthy, seen from outside and inside?

Every expectation is derived from the same pure rendering the stack deploys (records,
PTRs, firewall rules, certificate names, hosts and their services), never kept by hand:

- `expect.py`    what should be true, from settings + addresses + DKIM public keys
- `decide.py`    pure decisions: observation + expectation -> ok / warn / error
- `probe.py`     socket-level probes (ports, TLS, SMTP, HTTPS), standard library only:
                 the operator's view and the MX hosts' view of each other run this code
- `outside.py`   the operator's side: DNS, and probe.py from the operator's vantage point
- `inside.py`    one program per host (collect.py + probe.py), run over the deploy-step
                 channel, returning JSON; on mx1 and mx2 it also looks at the other MX
- `hostchecks.py` judges a host's program output (the peer view included)
- `engine.py`    runs the probes, applies the decisions, formats and exits
- `__main__.py`  the real stack: `pulumi stack output --json` + stack config, SSH

The lab (`python -m lab status`) builds the same `Environment` with its own channel
(nsenter) and vantage point (the lab's internet), and runs `engine.run` unchanged.
"""
