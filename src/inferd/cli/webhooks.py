"""`inferd webhooks`: the signing secret of your async predictions' webhooks, and the deliveries
of one prediction."""

from __future__ import annotations

import click

from inferd.cli.common import Group, client_for, json_option, print_json, print_table, server_option


@click.group(cls=Group)
def webhooks() -> None:
    """Webhooks of async predictions: your signing secret, a prediction's deliveries."""


@webhooks.command("secret")
@click.option(
    "--rotate", is_flag=True,
    help="Make a new secret; the previous one keeps signing for the grace period.",
)  # fmt: skip
@server_option
@json_option
def webhooks_secret(rotate: bool, server: str | None, as_json: bool) -> None:
    """Print your webhook signing secret (created on first use); verify deliveries with it:
    standardwebhooks.Webhook(secret).verify(body, headers)."""
    with client_for(server) as c:
        doc = c.rotate_webhook_secret() if rotate else c.webhook_secret()
    if as_json:
        print_json(doc)
        return
    click.echo(doc["secret"])
    if doc.get("previous"):
        until = doc.get("previous_until")
        click.echo(f"previous (still signs{' until ' + until if until else ''}): "
                   f"{doc['previous']}", err=True)  # fmt: skip


@webhooks.command("deliveries")
@click.argument("job_id")
@server_option
@json_option
def webhooks_deliveries(job_id: str, server: str | None, as_json: bool) -> None:
    """A prediction's webhook deliveries: event, status, attempts, the last answer."""
    with client_for(server) as c:
        rows = c.prediction_deliveries(job_id)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ("id", "event", "status", "attempts", "last_code", "last_error",
                           "next_at", "finished_at"))  # fmt: skip
