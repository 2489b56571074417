"""`inferd models`: create, list, show, delete, upload and import versions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from rich import progress as rp
from rich.console import Console

from inferd.cli.common import (
    CliError,
    Group,
    cell,
    client_for,
    json_arg,
    json_option,
    print_details,
    print_json,
    print_table,
    server_flags,
    server_option,
    v2_body,
)


@click.group(cls=Group)
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
    with client_for(server) as c:
        m = c.create_model(name, description=description, framework=framework,
                           model_type=model_type, task_type=task_type, tags=list(tags),
                           visibility="public" if public else "private")  # fmt: skip
    if as_json:
        print_json(m)
    else:
        click.echo(f"created model {m['name']} ({m['visibility']})")


@models.command("list")
@server_option
@json_option
def models_list(server: str | None, as_json: bool) -> None:
    """Models you may see: yours, public ones and the repository's."""
    with client_for(server) as c:
        rows = c.models()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ("name", "visibility", "framework", "task_type", "tags", "system",
                           "updated_at"))  # fmt: skip


VERSION_COLUMNS = ("version", "status", "format", "size_bytes", "sha256", "created_at", "reason")


@models.command("show")
@click.argument("name")
@server_option
@json_option
def models_show(name: str, server: str | None, as_json: bool) -> None:
    """A model and its versions (JSON: {"model": ..., "versions": [...]})."""
    with client_for(server) as c:
        m = c.model(name)
        versions = c.versions(name)
    if as_json:
        print_json({"model": m, "versions": versions})
        return
    print_details(m, ("name", "id", "description", "framework", "model_type", "task_type", "tags",
                      "visibility", "owner_id", "system", "created_at", "updated_at"),
                  name)  # fmt: skip
    print_table(versions, VERSION_COLUMNS, "versions")


@models.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@server_option
def models_delete(name: str, yes: bool, server: str | None) -> None:
    """Delete a model with its versions, artifacts and deployment."""
    if not yes:
        click.confirm(f"delete model {name}, its versions and its deployment?", abort=True)
    with client_for(server) as c:
        c.delete_model(name)
    click.echo(f"deleted model {name}")


def _meta(runtime: str | None, meta: str | None, sample_input: str | None) -> dict[str, Any]:
    doc = json_arg(meta, "--meta") if meta else {}
    if not isinstance(doc, dict):
        raise CliError("--meta: must be a JSON object")
    if runtime:
        doc["runtime"] = runtime
    if sample_input:
        doc["sample_input"] = v2_body(json_arg(sample_input, "--sample-input"), "--sample-input")
    return doc


def _version_done(v: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print_json(v)
    else:
        click.echo(f"{v['model']} version {v['version']}: {v['status']} ({cell(v['format'])}, "
                   f"{cell(v['size_bytes'])} bytes, sha256 {cell(v['sha256'])})")  # fmt: skip
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
    with client_for(server) as c, progress:
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
@server_flags("--server")  # --url names the artifact here
@json_option
def models_import(
    name: str, source: str, wait: bool, timeout: float, runtime: str | None, meta: str | None,
    sample_input: str | None, server: str | None, as_json: bool,
) -> None:  # fmt: skip
    """Import a version from a URL (the server downloads it)."""
    with client_for(server) as c:
        v = c.import_url(name, source, _meta(runtime, meta, sample_input) or None)
        if wait:
            with Console(stderr=True).status(f"importing {name} version {v['version']}"):
                v = c.wait_version(name, v["version"], timeout)
    _version_done(v, as_json)
