# The two commands the README promises: `make lab` and `make test`. Both set up
# everything they need on a fresh Debian 12 machine (as root) through `setup`.
PY := .venv/bin/python

.PHONY: setup test test-fast test-slow test-lab lab lab-up lab-down bench snapshot config-reference hash-password status

setup:
	@bash scripts/setup-host.sh

# Everything: settings, rendering, Pulumi mocks, every config checked by the real
# Debian 12 daemons (smtpd -n, doveconf, rspamadm, nft, cloud-init schema, PostgreSQL
# replication...), then the lab scenarios (marker `lab`: three nspawn hosts, ~13 min).
# This is what CI runs (.ci/run).
test: setup
	$(PY) -m pytest -m "not lab_slow"

# The slow lab set (marker `lab_slow`, lab.scenarios.SLOW: faults-hosts), on a lab of its own.
test-slow: setup
	$(PY) -m pytest -m lab_slow

# The quick loop (about a minute): everything but the lab (pytest.ini deselects `lab`).
test-fast: setup
	$(PY) -m pytest

test-lab: setup
	$(PY) -m pytest -m lab

# The main job: bring up mx1, imap and mx2 locally, run the scenarios, tear down.
lab: setup
	$(PY) -m lab run

lab-up: setup
	$(PY) -m lab up

lab-down:
	$(PY) -m lab down

# Figures from the lab (throughput, mx2's backlog drain, recovery after kill -9, lab
# phases): printed, never asserted. Uses a running lab, or brings one up and down.
bench: setup
	$(PY) -m lab bench

# Is the deployed stack healthy? (the selected Pulumi stack; docs/status.md)
status: setup
	$(PY) -m mailstack.status

snapshot: setup
	$(PY) scripts/update-snapshot.py

# README.md's table of every config key, from the settings model (after a field changes).
config-reference: setup
	$(PY) scripts/config-reference.py

hash-password: setup
	@$(PY) scripts/hash-password
