"""One `remote.Command` per deploy step of `mailstack.deploy.plan`, and one per server
that learns its SSH host key.

Host keys are learned once, not generated in the stack: they must exist at first boot,
before any SSH connection, and user-data (the only earlier channel) must not carry
secrets. `host-key-<role>` runs `ssh.HOST_KEY_COMMAND` over the first connection (which
carries no secret) and keeps the key in state; it runs again only when the server is
replaced. Every deploy step then passes that key as the connection's `host_key`, so a
server presenting another key fails the deploy before the program (and its secrets) is
sent.

The program travels on stdin (a secret input), never on the command line, so neither the
Pulumi log nor the server's process list shows its secrets; `deploy.RUN_PROGRAM`, shared
with the lab, runs it.
"""

from __future__ import annotations

import pulumi
import pulumi_hcloud as hcloud
from pulumi_command import remote

from mailstack import context, deploy, ssh
from mailstack import hosts as H
from mailstack.settings import Settings


def _servers_behind(step: deploy.Step, steps: dict[str, deploy.Step]) -> list[str]:
    """Roles of every server this step (transitively) builds on: a rebuilt server must
    rerun the steps that copied its state (a replica after a new primary, say)."""
    roles, todo = [], [step.name]
    while todo:
        s = steps[todo.pop()]
        if s.host not in roles:
            roles.append(s.host)
        todo.extend(s.depends_on)
    return sorted(roles)


class DeploySteps(pulumi.ComponentResource):
    commands: dict[str, remote.Command]

    def __init__(
        self,
        name: str,
        settings: Settings,
        hosts: dict[str, H.Host],
        *,
        servers: dict[str, hcloud.Server],
        addresses: pulumi.Output[dict[str, H.Address]],
        secrets: pulumi.Output[context.Secrets],
        storage_box: pulumi.Output[dict[str, str] | None],
        private_key: pulumi.Output[str],
        host_extras: dict[str, list[pulumi.Resource]],
        dns_ready: list[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("mailstack:index:DeploySteps", name, None, opts)
        plan = deploy.plan(settings)
        by_name = {s.name: s for s in plan}
        self.commands = {}
        self.host_keys: dict[str, pulumi.Output[str]] = {}
        for role in hosts:
            learn = remote.Command(
                f"host-key-{role}",
                connection=remote.ConnectionArgs(
                    host=addresses.apply(lambda a, r=role: a[r].ipv4),
                    user="root",
                    private_key=pulumi.Output.secret(private_key),
                    dial_error_limit=60,
                    per_dial_timeout=10,
                ),
                create=ssh.HOST_KEY_COMMAND,
                triggers=[servers[role].id],
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=[servers[role], *host_extras.get(role, ())],
                    # Learned once per server: a changed command must not relearn a key
                    # from a server that may no longer be the one first seen.
                    ignore_changes=["create", "connection"],
                    custom_timeouts=pulumi.CustomTimeouts(create="30m"),
                ),
            )
            self.host_keys[role] = learn.stdout.apply(ssh.host_key_line)
        for step in plan:
            bundle = pulumi.Output.all(addresses, secrets, storage_box).apply(
                lambda v, step=step: step.render(context.Context(settings, hosts, v[0], v[1], v[2]))
            )
            connection = remote.ConnectionArgs(
                host=addresses.apply(lambda a, r=step.host: a[r].ipv4),
                user="root",
                private_key=pulumi.Output.secret(private_key),
                host_key=self.host_keys[step.host],
                # A fresh server needs a minute or two before sshd answers.
                dial_error_limit=60,
                per_dial_timeout=10,
            )
            depends = [servers[step.host], *host_extras.get(step.host, ())]
            depends += [self.commands[d] for d in step.depends_on]
            if step.needs_dns:
                depends += dns_ready
            self.commands[step.name] = remote.Command(
                step.name,
                connection=connection,
                create=deploy.RUN_PROGRAM,
                stdin=pulumi.Output.secret(bundle.apply(lambda b, n=step.name: b.shell(n))),
                triggers=[
                    *(servers[r].id for r in _servers_behind(step, by_name)),
                    pulumi.Output.secret(bundle.apply(lambda b: b.digest())),
                ],
                logging=remote.Logging.STDOUT_AND_STDERR,
                opts=pulumi.ResourceOptions(
                    parent=self,
                    depends_on=depends,
                    # Steps never print secrets, but their output is kept encrypted anyway.
                    additional_secret_outputs=["stdout", "stderr"],
                    custom_timeouts=pulumi.CustomTimeouts(create="30m", update="30m"),
                ),
            )
        self.register_outputs({})
