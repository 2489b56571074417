"""`inferd login`, `logout`, `whoami` and `inferd keys` (create, list, revoke)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import click

from inferd.cli.common import (
    CliError,
    Command,
    Group,
    cell,
    client_for,
    json_option,
    print_details,
    print_json,
    print_table,
    saved_credentials,
    server_option,
    server_url,
)
from inferd.client import Client, Credentials
from inferd.client import credentials as saved_file

# ---- login -----------------------------------------------------------------------------------


@click.command(cls=Command)
@server_option
@click.option("--username", "-u", help="Prompted when not given (with no --key).")
@click.option("--password", "-p", envvar="INFERD_PASSWORD", help="Prompted (hidden) if not given.")
@click.option("--key", help="Log in with an API key (inferd_...) instead of a password.")
def login(server: str | None, username: str | None, password: str | None, key: str | None) -> None:
    """Save credentials for a server (0600 file; $INFERD_CONFIG overrides where)."""
    url = server_url(server, saved_credentials())
    if key:
        if username or password:
            raise CliError("give --key, or --username and --password, not both")
        with Client(url, api_key=key) as c:
            me = c.me()
        creds = Credentials(url, username=me["username"], api_key=key)
    else:
        username = username or click.prompt("username")
        password = password or click.prompt("password", hide_input=True)
        with Client(url) as c:
            pair = c.login(str(username), str(password))
            me = c.me()
        creds = Credentials(url, username=me["username"], access_token=pair["access_token"],
                            refresh_token=pair.get("refresh_token"))  # fmt: skip
    path = saved_file.save_credentials(creds)
    click.echo(f"logged in to {url} as {me['username']} ({me['role']}, {me['via']})")
    click.echo(f"credentials saved in {path}", err=True)


@click.command(cls=Command)
def logout() -> None:
    """Forget the saved credentials."""
    click.echo("logged out" if saved_file.remove_credentials() else "not logged in")


@click.command(cls=Command)
@server_option
@json_option
def whoami(server: str | None, as_json: bool) -> None:
    """Who the current credential is, with its scopes."""
    with client_for(server) as c:
        me = c.me()
    if as_json:
        print_json(me)
    else:
        print_details(me, ("username", "id", "role", "via", "scopes", "trusted"), f"{c.base_url}")


# ---- keys ------------------------------------------------------------------------------------

SCOPES = click.Choice(["infer", "manage", "admin"])


@click.group(cls=Group)
def keys() -> None:
    """API keys: create, list, revoke."""


@keys.command("create")
@click.argument("name")
@click.option("--scope", "scopes", multiple=True, type=SCOPES, default=("infer",),
              show_default=True, help="Repeat for several scopes.")  # fmt: skip
@click.option("--expires-in-days", type=click.IntRange(min=1), help="Default: never expires.")
@click.option("--user-id", help="Admins: a key for another user.")
@server_option
@json_option
def keys_create(
    name: str, scopes: tuple[str, ...], expires_in_days: int | None, user_id: str | None,
    server: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Create a key; it is printed once, on stdout."""
    expires = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
    with client_for(server) as c:
        k = c.create_key(name, scopes, expires, user_id)
    if as_json:
        print_json(k)
        return
    click.echo(k["key"])
    click.echo("warning: store this key now, it will not be shown again", err=True)
    click.echo(f"key {k['id']} ({k['name']}): scopes {cell(k['scopes'])}, "
               f"expires {cell(k['expires_at'], 'expires_at')}", err=True)  # fmt: skip


@keys.command("list")
@click.option("--user-id", help="Admins: another user's keys.")
@server_option
@json_option
def keys_list(user_id: str | None, server: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    with client_for(server) as c:
        rows = c.keys(user_id)
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ("id", "name", "prefix", "scopes", "created_at", "expires_at",
                           "revoked_at", "last_used_at"))  # fmt: skip


@keys.command("revoke")
@click.argument("key_id")
@server_option
def keys_revoke(key_id: str, server: str | None) -> None:
    """Revoke a key: it stops working at once."""
    with client_for(server) as c:
        k = c.revoke_key(key_id)
    click.echo(f"revoked key {k['id']} ({k['name']})")
