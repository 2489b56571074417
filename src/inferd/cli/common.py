"""What the platform commands share: the `error: ...` exit, the --url/--json options, the client
built from the saved credentials, and the table, JSON and argument helpers.

Every command speaks to a server through the SDK (`inferd.client`), never to the server's code.
Failures print `error: <message>` on stderr and exit with status 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import click
from rich.console import Console
from rich.table import Table

from inferd.client import DEFAULT_URL, Client, Credentials, InferdClientError
from inferd.client import credentials as saved_file
from inferd.client.tensors import request_body

# ---- errors ----------------------------------------------------------------------------------


class CliError(click.ClickException):
    """A failure shown as `error: <message>` (and a hint) on stderr; exit status 1."""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"error: {self.message}", err=True)
        if self.hint:
            click.echo(f"hint: {self.hint}", err=True)


def _from_client(e: InferdClientError) -> CliError:
    message = e.message
    if e.retry_after is not None:
        message += f" (retry after {e.retry_after:g}s)"
    hint = None
    if e.status == 401:
        hint = "run `inferd login` (or set INFERD_API_KEY) for this server"
    return CliError(message, hint)


class Command(click.Command):
    """Turns a refused call into `error: ...` instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InferdClientError as e:
            raise _from_client(e) from None


class Group(click.Group):
    command_class = Command
    group_class = type  # subgroups are Group too


# ---- shared options and the client -----------------------------------------------------------


def server_flags(*flags: str) -> Any:
    """The server option under the given flags (`models import` keeps --url for the artifact)."""
    return click.option(
        *flags, "server", envvar="INFERD_URL", default=None, metavar="URL",
        help=f"Server (env INFERD_URL; default: the one you logged in to, else {DEFAULT_URL}).",
    )  # fmt: skip


server_option = server_flags("--url", "--server")
json_option = click.option("--json", "as_json", is_flag=True, help="Print raw JSON.")


def saved_credentials() -> Credentials | None:
    try:
        return saved_file.load_credentials()
    except ValueError as e:
        raise CliError(str(e), "run `inferd logout`, then `inferd login`") from None


def server_url(server: str | None, saved: Credentials | None) -> str:
    return (server or (saved.url if saved else "") or DEFAULT_URL).rstrip("/")


def client_for(server: str | None) -> Client:
    """A client for the chosen server with the caller's credential: INFERD_API_KEY, else what
    `inferd login` saved — but only for the server it was saved for (a token never leaks to
    another host because --url pointed elsewhere)."""
    saved = saved_credentials()
    url = server_url(server, saved)
    key = os.environ.get("INFERD_API_KEY")
    if key:
        return Client(url, api_key=key)
    if saved is None or saved.url.rstrip("/") != url:
        return Client(url)
    if saved.api_key:
        return Client(url, api_key=saved.api_key)
    creds = saved

    def keep(pair: dict[str, Any]) -> None:
        # a refreshed session replaces the saved one, so the next command starts from it
        creds.access_token = pair["access_token"]
        creds.refresh_token = pair.get("refresh_token")
        saved_file.save_credentials(creds)

    return Client(url, token=saved.access_token, refresh_token=saved.refresh_token,
                  on_tokens=keep)  # fmt: skip


# ---- output ----------------------------------------------------------------------------------


def print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def cell(value: Any, column: str = "") -> str:
    if value is None or value == "":
        return "-"
    if column.endswith("_at") and isinstance(value, str):
        return value[:19].replace("T", " ")  # to the second, and the column says it is UTC
    if column == "sha256" and isinstance(value, str):
        return value[:12]  # enough to compare by eye; --json has it whole
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    if isinstance(value, dict):
        return json.dumps(value)
    return str(value)


def print_table(rows: Iterable[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    table = Table(title=title or None)
    for column in columns:
        table.add_column(column.replace("_", " ").replace(" at", " (UTC)"), overflow="fold")
    for row in rows:
        table.add_row(*(cell(row.get(c), c) for c in columns))
    Console().print(table)


def print_details(doc: dict[str, Any], fields: Sequence[str], title: str = "") -> None:
    table = Table(title=title or None, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for f in fields:
        table.add_row(f.replace("_", " ").replace(" at", " (UTC)"), cell(doc.get(f), f))
    Console().print(table)


def json_arg(value: str, what: str) -> Any:
    """JSON given inline, as a file path, or `-` for stdin."""
    if value == "-":
        text = sys.stdin.read()
    elif value.lstrip().startswith(("{", "[")):
        text = value
    else:
        path = Path(value)
        if not path.is_file():
            raise CliError(f"{what}: '{value[:100]}' is neither JSON nor a file")
        text = path.read_text()
    try:
        return json.loads(text)
    except ValueError as e:
        raise CliError(f"{what}: not valid JSON ({e})") from None


def v2_body(doc: Any, what: str) -> dict[str, Any]:
    try:
        return request_body(doc)
    except (TypeError, ValueError) as e:
        raise CliError(f"{what}: {e}") from None
