"""Pulumi entry point: stack config -> Settings -> one MailStack component."""
import os

import pulumi

from components.mailstack import MailStack
from mailstack.settings import load_stack, pulumi_config

# Raises SettingsError naming every bad key (and a missing or clear-text Hetzner token)
# before a single resource is declared.
settings = load_stack(*pulumi_config(), os.environ)
stack = MailStack(f"mailstack-{pulumi.get_stack()}", settings)
for key, value in stack.outputs.items():
    pulumi.export(key, value)
