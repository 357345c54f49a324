"""Pulumi entry point: stack config -> Settings -> one MailStack component."""

import os

import pulumi

from components import catalogue
from components.config import stack_config
from components.mailstack import MailStack
from mailstack import hosts
from mailstack.settings import load_stack

# Raises SettingsError naming every bad key (and a missing or clear-text Hetzner token)
# before a single resource is declared; then the server types, location and image are
# looked up in Hetzner's catalogue (also in `pulumi preview`), with the same kind of error.
settings = load_stack(*stack_config(), os.environ)
location = catalogue.check(settings, hosts.hosts(settings))
stack = MailStack(f"mailstack-{pulumi.get_stack()}", settings, location)
for key, value in stack.outputs.items():
    pulumi.export(key, value)
