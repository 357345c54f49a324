"""Pure rendering for mailstack: settings in, config files, DNS records, firewall rules
and deploy steps out. Nothing here imports Pulumi, so all of it is tested directly and
reused unchanged by the local lab."""
