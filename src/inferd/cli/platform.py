"""Platform commands of `inferd`: login, keys, models, pipelines, deploy, deployments, traffic,
routing, rollout, abtest, predict, jobs, webhooks, batch.

One module per command group: `account` (login, logout, whoami, keys), `models`, `pipelines`,
`jobs`, `webhooks`, `batches` (batch), `deployments`
(deploy, deployments, predict); what they share (errors, options, the client, output) is in
`common`. Every command speaks to a server through the SDK (`inferd.client`), never to the
server's code; failures print `error: <message>` on stderr and exit with status 1.
"""

from __future__ import annotations

import click

from inferd.cli.account import keys, login, logout, whoami
from inferd.cli.batches import batch
from inferd.cli.deployments import (
    abtest,
    deploy,
    deployments,
    predict,
    rollout,
    routing,
    traffic,
)
from inferd.cli.jobs import jobs
from inferd.cli.models import models
from inferd.cli.pipelines import pipelines
from inferd.cli.webhooks import webhooks

COMMANDS = (login, logout, whoami, keys, models, pipelines, deploy, deployments, traffic, routing,
            rollout, abtest, predict, jobs, webhooks, batch)  # fmt: skip


def register(group: click.Group) -> None:
    """Add the platform commands to the `inferd` group."""
    for command in COMMANDS:
        group.add_command(command)
