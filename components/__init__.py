"""Pulumi ComponentResources: each turns a pure result from `mailstack/` into resources."""
