"""Platform commands of `inferd`: login, keys, models, deploy, deployments, predict.

Every command speaks to a server through the SDK (`inferd.client`), never to the server's code.
Failures print `error: <message>` on stderr and exit with status 1, never a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

import click
from rich import progress as rp
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


class _Command(click.Command):
    """Turns a refused call into `error: ...` instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except InferdClientError as e:
            raise _from_client(e) from None


class _Group(click.Group):
    command_class = _Command
    group_class = type  # subgroups are _Group too


# ---- shared options and the client -----------------------------------------------------------


def _server(*flags: str) -> Any:
    return click.option(
        *flags, "server", envvar="INFERD_URL", default=None, metavar="URL",
        help=f"Server (env INFERD_URL; default: the one you logged in to, else {DEFAULT_URL}).",
    )  # fmt: skip


server_option = _server("--url", "--server")
json_option = click.option("--json", "as_json", is_flag=True, help="Print raw JSON.")


def _saved() -> Credentials | None:
    try:
        return saved_file.load_credentials()
    except ValueError as e:
        raise CliError(str(e), "run `inferd logout`, then `inferd login`") from None


def _url(server: str | None, saved: Credentials | None) -> str:
    return (server or (saved.url if saved else "") or DEFAULT_URL).rstrip("/")


def _client(server: str | None) -> Client:
    """A client for the chosen server with the caller's credential: INFERD_API_KEY, else what
    `inferd login` saved — but only for the server it was saved for (a token never leaks to
    another host because --url pointed elsewhere)."""
    saved = _saved()
    url = _url(server, saved)
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


def _print_json(doc: Any) -> None:
    click.echo(json.dumps(doc, indent=2))


def _cell(value: Any, column: str = "") -> str:
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


def _table(rows: Iterable[dict[str, Any]], columns: Sequence[str], title: str = "") -> None:
    table = Table(title=title or None)
    for column in columns:
        table.add_column(column.replace("_", " ").replace(" at", " (UTC)"), overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(c), c) for c in columns))
    Console().print(table)


def _details(doc: dict[str, Any], fields: Sequence[str], title: str = "") -> None:
    table = Table(title=title or None, show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for f in fields:
        table.add_row(f.replace("_", " ").replace(" at", " (UTC)"), _cell(doc.get(f), f))
    Console().print(table)


def _json_arg(value: str, what: str) -> Any:
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


def _v2_body(doc: Any, what: str) -> dict[str, Any]:
    try:
        return request_body(doc)
    except (TypeError, ValueError) as e:
        raise CliError(f"{what}: {e}") from None


# ---- login -----------------------------------------------------------------------------------


@click.command(cls=_Command)
@server_option
@click.option("--username", "-u", help="Prompted when not given (with no --key).")
@click.option("--password", "-p", envvar="INFERD_PASSWORD", help="Prompted (hidden) if not given.")
@click.option("--key", help="Log in with an API key (inferd_...) instead of a password.")
def login(server: str | None, username: str | None, password: str | None, key: str | None) -> None:
    """Save credentials for a server (0600 file; $INFERD_CONFIG overrides where)."""
    url = _url(server, _saved())
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


@click.command(cls=_Command)
def logout() -> None:
    """Forget the saved credentials."""
    click.echo("logged out" if saved_file.remove_credentials() else "not logged in")


@click.command(cls=_Command)
@server_option
@json_option
def whoami(server: str | None, as_json: bool) -> None:
    """Who the current credential is, with its scopes."""
    with _client(server) as c:
        me = c.me()
    if as_json:
        _print_json(me)
    else:
        _details(me, ("username", "id", "role", "via", "scopes", "trusted"), f"{c.base_url}")


# ---- keys ------------------------------------------------------------------------------------

SCOPES = click.Choice(["infer", "manage", "admin"])


@click.group(cls=_Group)
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
    with _client(server) as c:
        k = c.create_key(name, scopes, expires, user_id)
    if as_json:
        _print_json(k)
        return
    click.echo(k["key"])
    click.echo("warning: store this key now, it will not be shown again", err=True)
    click.echo(f"key {k['id']} ({k['name']}): scopes {_cell(k['scopes'])}, "
               f"expires {_cell(k['expires_at'], 'expires_at')}", err=True)  # fmt: skip


@keys.command("list")
@click.option("--user-id", help="Admins: another user's keys.")
@server_option
@json_option
def keys_list(user_id: str | None, server: str | None, as_json: bool) -> None:
    """List keys (never their secrets)."""
    with _client(server) as c:
        rows = c.keys(user_id)
    if as_json:
        _print_json(rows)
    else:
        _table(rows, ("id", "name", "prefix", "scopes", "created_at", "expires_at", "revoked_at",
                      "last_used_at"))  # fmt: skip


@keys.command("revoke")
@click.argument("key_id")
@server_option
def keys_revoke(key_id: str, server: str | None) -> None:
    """Revoke a key: it stops working at once."""
    with _client(server) as c:
        k = c.revoke_key(key_id)
    click.echo(f"revoked key {k['id']} ({k['name']})")


# ---- models ----------------------------------------------------------------------------------


@click.group(cls=_Group)
def models() -> None:
    """Models and their versions: create, list, show, upload, import, delete."""


@models.command("create")
@click.argument("name")
@click.option("--description", default="")
@click.option("--framework", default="")
@click.option("--model-type", default="")
@click.option("--task-type", default="")
@click.option("--tag", "tags", multiple=True, help="Repeat for several tags.")
@click.option("--public/--private", default=False, help="Who may see and call it [private].")
@server_option
@json_option
def models_create(
    name: str, description: str, framework: str, model_type: str, task_type: str,
    tags: tuple[str, ...], public: bool, server: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Create a model (then upload a version to it)."""
    with _client(server) as c:
        m = c.create_model(name, description=description, framework=framework,
                           model_type=model_type, task_type=task_type, tags=list(tags),
                           visibility="public" if public else "private")  # fmt: skip
    if as_json:
        _print_json(m)
    else:
        click.echo(f"created model {m['name']} ({m['visibility']})")


@models.command("list")
@server_option
@json_option
def models_list(server: str | None, as_json: bool) -> None:
    """Models you may see: yours, public ones and the repository's."""
    with _client(server) as c:
        rows = c.models()
    if as_json:
        _print_json(rows)
    else:
        _table(rows, ("name", "visibility", "framework", "task_type", "tags", "system",
                      "updated_at"))  # fmt: skip


VERSION_COLUMNS = ("version", "status", "format", "size_bytes", "sha256", "created_at", "reason")


@models.command("show")
@click.argument("name")
@server_option
@json_option
def models_show(name: str, server: str | None, as_json: bool) -> None:
    """A model and its versions (JSON: {"model": ..., "versions": [...]})."""
    with _client(server) as c:
        m = c.model(name)
        versions = c.versions(name)
    if as_json:
        _print_json({"model": m, "versions": versions})
        return
    _details(m, ("name", "id", "description", "framework", "model_type", "task_type", "tags",
                 "visibility", "owner_id", "system", "created_at", "updated_at"), name)  # fmt: skip
    _table(versions, VERSION_COLUMNS, "versions")


@models.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@server_option
def models_delete(name: str, yes: bool, server: str | None) -> None:
    """Delete a model with its versions, artifacts and deployment."""
    if not yes:
        click.confirm(f"delete model {name}, its versions and its deployment?", abort=True)
    with _client(server) as c:
        c.delete_model(name)
    click.echo(f"deleted model {name}")


def _meta(runtime: str | None, meta: str | None, sample_input: str | None) -> dict[str, Any]:
    doc = _json_arg(meta, "--meta") if meta else {}
    if not isinstance(doc, dict):
        raise CliError("--meta: must be a JSON object")
    if runtime:
        doc["runtime"] = runtime
    if sample_input:
        doc["sample_input"] = _v2_body(_json_arg(sample_input, "--sample-input"), "--sample-input")
    return doc


def _version_done(v: dict[str, Any], as_json: bool) -> None:
    if as_json:
        _print_json(v)
    else:
        click.echo(f"{v['model']} version {v['version']}: {v['status']} ({_cell(v['format'])}, "
                   f"{_cell(v['size_bytes'])} bytes, sha256 {_cell(v['sha256'])})")  # fmt: skip
    if v["status"] == "failed":
        raise CliError(f"version {v['version']} failed: {v.get('reason') or 'no reason given'}")


_runtime = click.option("--runtime", help="Runtime to serve it with (default: from the format).")
_meta_opt = click.option("--meta", metavar="FILE_OR_JSON", help="Version metadata (JSON object).")
_sample = click.option("--sample-input", metavar="FILE_OR_JSON",
                       help='A V2 body or {"INPUT": [[...]]} to check and test with.')  # fmt: skip


@models.command("upload")
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@_runtime
@_meta_opt
@_sample
@server_option
@json_option
def models_upload(
    name: str, file: Path, runtime: str | None, meta: str | None, sample_input: str | None,
    server: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Upload FILE as a new version of NAME; the server validates it by loading it."""
    doc = _meta(runtime, meta, sample_input)
    progress = rp.Progress(
        rp.TextColumn("{task.description}"), rp.BarColumn(), rp.DownloadColumn(),
        rp.TransferSpeedColumn(), rp.TimeRemainingColumn(), console=Console(stderr=True),
    )  # fmt: skip
    with _client(server) as c, progress:
        task = progress.add_task(f"uploading {file.name}", total=file.stat().st_size)

        def report(sent: int, total: int) -> None:
            progress.update(task, completed=sent, total=total)
            if sent >= total:  # the bytes are out; the server now loads the model to check it
                progress.update(task, description=f"validating {file.name}")

        v = c.upload(name, file, doc or None, on_progress=report)
    _version_done(v, as_json)


@models.command("import")
@click.argument("name")
@click.option("--url", "source", required=True, help="http(s) URL of the artifact.")
@click.option("--wait", is_flag=True, help="Wait until the version is ready or failed.")
@click.option("--timeout", type=float, default=600, show_default=True, help="Seconds to --wait.")
@_runtime
@_meta_opt
@_sample
@_server("--server")  # --url names the artifact here
@json_option
def models_import(
    name: str, source: str, wait: bool, timeout: float, runtime: str | None, meta: str | None,
    sample_input: str | None, server: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Import a version from a URL (the server downloads it)."""
    with _client(server) as c:
        v = c.import_url(name, source, _meta(runtime, meta, sample_input) or None)
        if wait:
            with Console(stderr=True).status(f"importing {name} version {v['version']}"):
                v = c.wait_version(name, v["version"], timeout)
    _version_done(v, as_json)


# ---- deployments -----------------------------------------------------------------------------


def _deploy_config(
    existing: dict[str, Any] | None, options: dict[str, Any], batching: dict[str, Any]
) -> dict[str, Any] | None:
    """The config to send: the options given, over the current config when redeploying (the
    server replaces a config whole, so unchanged fields must be sent again)."""
    if not options and not batching:
        return None
    base = dict(existing["config"]) if existing else {}
    cfg = {**base, **options}
    if batching:
        cfg["batching"] = {**base.get("batching", {}), **batching}
    return cfg


def _deployed(dep: dict[str, Any], url: str, as_json: bool) -> None:
    if as_json:
        _print_json(dep)
    elif dep["status"] == "ready":
        click.echo(f"{dep['model']} version {dep['version']} is ready (deployment {dep['id']}); "
                   f"POST {url}{dep['endpoint']}")  # fmt: skip
    elif dep["status"] != "failed":
        click.echo(f"deployment {dep['id']}: {dep['status']} "
                   f"(follow it with `inferd deployments show {dep['id']}`)")  # fmt: skip
    if dep["status"] == "failed":
        raise CliError(f"deployment {dep['id']} failed: {dep.get('reason') or 'no reason given'}")


@click.command(cls=_Command)
@click.argument("name")
@click.option("--version", type=click.IntRange(min=1), help="Default: the newest ready one.")
@click.option("--min-replicas", type=click.IntRange(0, 64))
@click.option("--max-replicas", type=click.IntRange(1, 64))
@click.option("--instance-kind", type=click.Choice(["process", "thread"]))
@click.option("--max-batch-size", type=click.IntRange(min=0))
@click.option("--max-queue-delay-ms", type=click.FloatRange(min=0))
@click.option("--runtime")
@click.option("--no-wait", is_flag=True, help="Return at once instead of waiting for ready.")
@click.option("--timeout", type=float, default=300, show_default=True, help="Seconds to wait.")
@server_option
@json_option
def deploy(
    name: str, version: int | None, min_replicas: int | None, max_replicas: int | None,
    instance_kind: str | None, max_batch_size: int | None, max_queue_delay_ms: float | None,
    runtime: str | None, no_wait: bool, timeout: float, server: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Deploy a model version (or redeploy: a model has one deployment, updated in place)."""
    given = {"min_replicas": min_replicas, "max_replicas": max_replicas,
             "instance_kind": instance_kind, "runtime": runtime}  # fmt: skip
    options = {k: v for k, v in given.items() if v is not None}
    pairs = (("max_batch_size", max_batch_size), ("max_queue_delay_ms", max_queue_delay_ms))
    batching = {k: v for k, v in pairs if v is not None}
    with _client(server) as c:
        existing = next((d for d in c.deployments() if d["model"] == name), None)
        config = _deploy_config(existing, options, batching)
        if existing is None:
            dep = c.deploy(name, version, config, wait=False)
        else:
            if version is None:  # "deploy NAME" means its newest ready version
                ready = [v["version"] for v in c.versions(name) if v["status"] == "ready"]
                version = max(ready, default=None)
            dep = c.update_deployment(existing["id"], version, config, wait=False)
        if not no_wait:
            with Console(stderr=True).status(f"deploying {name} version {dep['version']}"):
                dep = c.wait_deployment(dep["id"], timeout)
    _deployed(dep, c.base_url, as_json)


@click.group(cls=_Group)
def deployments() -> None:
    """Deployments: list, show, test, delete."""


DEPLOYMENT_COLUMNS = ("id", "model", "version", "status", "reason", "generation",
                      "observed_generation", "updated_at")  # fmt: skip


@deployments.command("list")
@server_option
@json_option
def deployments_list(server: str | None, as_json: bool) -> None:
    """Deployments you may see."""
    with _client(server) as c:
        rows = c.deployments()
    if as_json:
        _print_json(rows)
    else:
        _table(rows, DEPLOYMENT_COLUMNS)


@deployments.command("show")
@click.argument("deployment_id")
@server_option
@json_option
def deployments_show(deployment_id: str, server: str | None, as_json: bool) -> None:
    """One deployment with its config."""
    with _client(server) as c:
        dep = c.deployment(deployment_id)
    if as_json:
        _print_json(dep)
    else:
        _details(dep, (*DEPLOYMENT_COLUMNS, "endpoint", "config", "created_by"), dep["model"])


@deployments.command("delete")
@click.argument("deployment_id")
@server_option
def deployments_delete(deployment_id: str, server: str | None) -> None:
    """Stop serving: the model is unloaded (its versions stay)."""
    with _client(server) as c:
        c.delete_deployment(deployment_id)
    click.echo(f"deleted deployment {deployment_id}")


@deployments.command("test")
@click.argument("deployment_id")
@server_option
@json_option
def deployments_test(deployment_id: str, server: str | None, as_json: bool) -> None:
    """Run the version's sample input and compare with its sample output (exit 1 if not)."""
    with _client(server) as c:
        result = c.test_deployment(deployment_id)
    if as_json:
        _print_json(result)
    elif result["passed"]:
        checked = "matches the expected output" if result.get("expected") else "ran"
        click.echo(f"passed: the sample input {checked}")
    if not result["passed"]:
        raise CliError("test failed: " + "; ".join(result.get("problems") or ["no reason given"]))


# ---- inference -------------------------------------------------------------------------------


@click.command(cls=_Command)
@click.argument("name")
@click.option("--input", "input_", required=True, metavar="FILE_OR_JSON",
              help='A V2 body {"inputs": [...]}, or {"INPUT": [[...]]} (floats FP32, ints INT64); '
                   "inline, a file, or - for stdin.")  # fmt: skip
@click.option("--version", help="A model version (default: the deployed one).")
@server_option
def predict(name: str, input_: str, version: str | None, server: str | None) -> None:
    """Run a model once (V2 inference) and print the response JSON."""
    body = _v2_body(_json_arg(input_, "--input"), "--input")
    with _client(server) as c:
        _print_json(c.predict_raw(name, body, version))


COMMANDS = (login, logout, whoami, keys, models, deploy, deployments, predict)


def register(group: click.Group) -> None:
    """Add the platform commands to the `inferd` group."""
    for command in COMMANDS:
        group.add_command(command)
