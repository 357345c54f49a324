"""`mailstack status`: is the deployed mail system healthy, seen from outside and inside?

Every expectation is derived from the same pure rendering the stack deploys (records,
PTRs, firewall rules, certificate names, hosts and their services), never kept by hand:

- `expect.py`    what should be true, from settings + addresses + DKIM public keys
- `decide.py`    pure decisions: observation + expectation -> ok / warn / error
- `outside.py`   probes from the operator's side (DNS, ports, TLS, SMTP, HTTPS)
- `inside.py`    one program per host, run over the deploy-step channel, returning JSON
- `engine.py`    runs the probes, applies the decisions, formats and exits
- `__main__.py`  the real stack: `pulumi stack output --json` + stack config, SSH

The lab (`python -m lab status`) builds the same `Environment` with its own channel
(nsenter) and vantage point (the lab's internet), and runs `engine.run` unchanged.
"""
