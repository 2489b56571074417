"""`inferd batch`: batch jobs: submit a file (and wait, with a progress bar), list, show,
cancel, download the output."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)

from inferd.cli.common import (
    CliError,
    Group,
    client_for,
    json_arg,
    json_option,
    print_details,
    print_json,
    print_table,
    server_option,
)
from inferd.client import Client

FIELDS = ("id", "model", "version", "status", "format", "api", "endpoint", "input_file_id",
          "output_file_id", "created_at", "in_progress_at", "completed_at", "error")  # fmt: skip
STATUSES = ("validating", "in_progress", "finalizing", "completed", "failed", "cancelling",
            "cancelled", "expired")  # fmt: skip


def wait_with_progress(c: Client, job: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Poll the job until it ends, with a progress bar of its rows on stderr."""
    total = job["progress"]["total"]
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TaskProgressColumn(), TextColumn("{task.fields[rate]}"),
               TimeRemainingColumn())  # fmt: skip
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(f"batch {job['id'][:18]}", total=total, rate="")

        def seen(doc: dict[str, Any]) -> None:
            p = doc["progress"]
            rate = f"{p['rows_per_s']:g} rows/s" if p.get("rows_per_s") else doc["status"]
            bar.update(task, completed=p["done"], rate=rate)

        return c.wait_batch(job["id"], timeout, on_status=seen)


@click.group(cls=Group)
def batch() -> None:
    """Batch jobs: run a file (JSONL, CSV, Parquet) through a model."""


@batch.command("submit")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--model", "-m", required=True, help="The model to run the rows through.")
@click.option("--version", "model_version", default=None, help="A version (default: as routed).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet"]), default=None,
              help="Default: from the file's bytes and name.")  # fmt: skip
@click.option("--api", default=None, help="Dialect of JSONL request bodies (v2, v1, "
              "openai.chat, ...); default: recognised per line.")  # fmt: skip
@click.option("--metadata", default=None, help="JSON object of strings kept with the job.")
@click.option("--wait", is_flag=True, help="Wait for the job to end, with a progress bar.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="With --wait: write the output file here.")  # fmt: skip
@click.option("--timeout", type=float, default=86400, show_default=True, help="Seconds.")
@server_option
@json_option
def batch_submit(file: Path, model: str, model_version: str | None, fmt: str | None,
                 api: str | None, metadata: str | None, wait: bool, output: Path | None,
                 timeout: float, server: str | None, as_json: bool) -> None:  # fmt: skip
    """Upload FILE and run it through a model; prints the job (and waits with --wait)."""
    if output is not None and not wait:
        raise CliError("--output needs --wait (or use `inferd batch download` later)")
    meta = json_arg(metadata, "--metadata") if metadata else None
    with client_for(server) as c:
        job = c.submit_batch(model, file, version=model_version, format=fmt, api=api,
                             metadata=meta)  # fmt: skip
        if not wait:
            if as_json:
                print_json(job)
            else:
                click.echo(f"batch {job['id']}: {job['status']}, {job['progress']['total']} rows")
            return
        job = wait_with_progress(c, job, timeout)
        if output is not None and job.get("output_file_id"):
            c.download_batch(job["id"], output)
    _report(job, as_json, output)


def _report(job: dict[str, Any], as_json: bool, output: Path | None) -> None:
    if as_json:
        print_json(job)
    else:
        p = job["progress"]
        click.echo(f"batch {job['id']}: {job['status']}: {p['succeeded']} rows succeeded, "
                   f"{p['failed']} failed of {p['total']}")  # fmt: skip
        if output is not None and job.get("output_file_id"):
            click.echo(f"output written to {output}")
    if job["status"] != "completed":
        raise CliError(f"batch {job['id']} {job['status']}: {job.get('error') or ''}".rstrip(": "))


@batch.command("list")
@click.option("--status", type=click.Choice(STATUSES))
@click.option("--limit", type=int, default=50, show_default=True)
@server_option
@json_option
def batch_list(status: str | None, limit: int, server: str | None, as_json: bool) -> None:
    """Your batch jobs, newest first."""
    with client_for(server) as c:
        rows = c.batches(status, limit)
    if as_json:
        print_json(rows)
        return
    for row in rows:
        p = row["progress"]
        row["rows"] = f"{p['done']}/{p['total']}" + (f" ({p['failed']} failed)" if p["failed"]
                                                      else "")  # fmt: skip
    print_table(rows, ("id", "model", "status", "format", "rows", "created_at", "completed_at"))


@batch.command("show")
@click.argument("batch_id")
@server_option
@json_option
def batch_show(batch_id: str, server: str | None, as_json: bool) -> None:
    """One batch job: status, progress (rows, rows per second, time left), files."""
    with client_for(server) as c:
        job = c.batch(batch_id)
    if as_json:
        print_json(job)
        return
    p = job["progress"]
    job["rows"] = f"{p['done']} of {p['total']} ({p['percent']}%), {p['failed']} failed"
    job["rows_per_s"] = p["rows_per_s"]
    job["eta_s"] = p["eta_s"]
    print_details(job, (*FIELDS[:4], "rows", "rows_per_s", "eta_s", *FIELDS[4:]))


@batch.command("cancel")
@click.argument("batch_id")
@server_option
def batch_cancel(batch_id: str, server: str | None) -> None:
    """Stop a batch job; the rows it stored so far are its output."""
    with client_for(server) as c:
        job = c.cancel_batch(batch_id)
    click.echo(f"batch {job['id']}: {job['status']}")


@batch.command("download")
@click.argument("batch_id")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Default: <batch id>.jsonl in the current folder.")  # fmt: skip
@server_option
def batch_download(batch_id: str, output: Path | None, server: str | None) -> None:
    """Write an ended batch job's output (JSONL, one line per input row) to a file."""
    dest = output or Path(f"{batch_id}.jsonl")
    with client_for(server) as c:
        n = c.download_batch(batch_id, dest)
    click.echo(f"{n} bytes written to {dest}")
