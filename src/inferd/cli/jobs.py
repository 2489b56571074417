"""`inferd jobs`: async predictions: list, show, cancel, wait (a spinner while it waits).
Queue one with `inferd predict NAME --input ... --async`."""

from __future__ import annotations

from typing import Any

import click
from rich.console import Console

from inferd.cli.common import (
    CliError,
    Group,
    client_for,
    json_option,
    print_details,
    print_json,
    print_table,
    server_option,
)
from inferd.client import Client

FIELDS = ("id", "model", "version", "status", "attempts", "created_at", "started_at",
          "finished_at", "error")  # fmt: skip


def wait_for_job(c: Client, job_id: str, timeout: float = 3600) -> dict[str, Any]:
    """Poll the job until it ends, showing its status on stderr while it waits."""
    console = Console(stderr=True)
    with console.status(f"prediction {job_id}: queued") as status:

        def seen(job: dict[str, Any]) -> None:
            done = ", ".join(f"{v} {k}" for k, v in (job.get("progress") or {}).items())
            status.update(f"prediction {job_id}: {job['status']} (attempt {job['attempts']}"
                          f"{'; ' + done if done else ''})")  # fmt: skip

        return c.wait_prediction(job_id, timeout, on_status=seen)


@click.group(cls=Group)
def jobs() -> None:
    """Async predictions: list, show, cancel, wait."""


@jobs.command("list")
@click.option("--status", type=click.Choice(["queued", "running", "succeeded", "failed",
                                             "cancelled"]))  # fmt: skip
@click.option("--limit", type=int, default=50, show_default=True)
@server_option
@json_option
def jobs_list(status: str | None, limit: int, server: str | None, as_json: bool) -> None:
    """Your async predictions, newest first."""
    with client_for(server) as c:
        rows = c.predictions(status, limit)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ("id", "model", "status", "attempts", "created_at", "finished_at"))


@jobs.command("show")
@click.argument("job_id")
@server_option
@json_option
def jobs_show(job_id: str, server: str | None, as_json: bool) -> None:
    """One prediction: its status, and its result (JSON) once it succeeded."""
    with client_for(server) as c:
        job = c.prediction(job_id)
    if as_json:
        print_json(job)
        return
    print_details(job, FIELDS)
    if job.get("result") is not None:
        print_json(job["result"])


@jobs.command("cancel")
@click.argument("job_id")
@server_option
def jobs_cancel(job_id: str, server: str | None) -> None:
    """Cancel a prediction: a queued one never runs, a running one is aborted."""
    with client_for(server) as c:
        job = c.cancel_prediction(job_id)
    state = "cancel requested" if job["status"] == "running" else job["status"]
    click.echo(f"prediction {job['id']}: {state}")


@jobs.command("wait")
@click.argument("job_id")
@click.option("--timeout", type=float, default=3600, show_default=True, help="Seconds.")
@server_option
def jobs_wait(job_id: str, timeout: float, server: str | None) -> None:
    """Wait for a prediction to end and print it; exit 1 unless it succeeded."""
    with client_for(server) as c:
        job = wait_for_job(c, job_id, timeout)
    print_json(job)
    if job["status"] != "succeeded":
        raise CliError(f"prediction {job_id} {job['status']}: {job.get('error') or ''}".rstrip())
