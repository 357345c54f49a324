"""The local lab: the whole mail system on one machine, booted the way Hetzner boots it.

Three systemd-nspawn hosts (mx1, imap, mx2) boot a Debian 12 image with the real
cloud-init and the user-data the Pulumi component renders; a network namespace plays the
internet (authoritative DNS, an ACME CA, an outside MTA). The same deploy steps then run
on them, and the scenarios check that mail flows. See docs/lab.md.
"""
