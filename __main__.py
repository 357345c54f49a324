"""Pulumi entry point: stack config -> Settings -> one MailStack component."""
import pulumi

from components.mailstack import MailStack
from mailstack.settings import load_settings, pulumi_config

# Raises SettingsError naming every bad key before a single resource is declared.
settings = load_settings(*pulumi_config())
stack = MailStack(f"mailstack-{pulumi.get_stack()}", settings)
for key, value in stack.outputs.items():
    pulumi.export(key, value)
