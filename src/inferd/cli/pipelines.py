"""`inferd pipelines`: create, update, validate, list, show and delete pipelines (documents in
JSON or YAML files; docs/pipelines.md). Deploy one with `inferd deploy <name>`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import yaml

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


def _document(path: str) -> dict[str, Any]:
    """A pipeline document from a JSON or YAML file (`-`: stdin); a repository `model.yaml`
    with `platform: pipeline` gives its `pipeline` mapping."""
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text()
    except OSError as e:
        raise CliError(f"{path}: {e.strerror}") from None
    try:
        doc = yaml.safe_load(text)  # JSON is YAML
    except yaml.YAMLError as e:
        raise CliError(f"{path}: neither JSON nor YAML ({e})") from None
    if isinstance(doc, dict) and doc.get("platform") == "pipeline" and "pipeline" in doc:
        doc = doc["pipeline"]
    if not isinstance(doc, dict):
        raise CliError(f"{path}: a pipeline document is a mapping")
    return doc


@click.group(cls=Group)
def pipelines() -> None:
    """Pipelines: inference graphs of models and processors, served as one model."""


@pipelines.command("create")
@click.argument("name")
@click.argument("document", metavar="FILE")
@click.option("--description", default="")
@click.option("--public/--private", default=False, help="Who may see and call it [private].")
@server_option
@json_option
def pipelines_create(name: str, document: str, description: str, public: bool,
                     server: str | None, as_json: bool) -> None:  # fmt: skip
    """Create pipeline NAME from FILE (JSON or YAML); checked before it is stored."""
    with client_for(server) as c:
        p = c.create_pipeline(name, _document(document), "public" if public else "private",
                              description)  # fmt: skip
    if as_json:
        print_json(p)
    else:
        click.echo(f"created pipeline {p['name']} version {p['version']} ({p['visibility']}); "
                   f"deploy it with: inferd deploy {p['name']}")  # fmt: skip


@pipelines.command("update")
@click.argument("name")
@click.argument("document", metavar="FILE")
@server_option
@json_option
def pipelines_update(name: str, document: str, server: str | None, as_json: bool) -> None:
    """Store FILE as the next version of pipeline NAME."""
    with client_for(server) as c:
        p = c.update_pipeline(name, _document(document))
    if as_json:
        print_json(p)
    else:
        click.echo(f"pipeline {p['name']} is at version {p['version']}")


@pipelines.command("validate")
@click.argument("document", metavar="FILE")
@server_option
@json_option
def pipelines_validate(document: str, server: str | None, as_json: bool) -> None:
    """Check FILE as saving it would, storing nothing."""
    with client_for(server) as c:
        r = c.validate_pipeline(_document(document))
    if as_json:
        print_json(r)
    else:
        click.echo(f"valid: nodes {', '.join(r['nodes'])}; models {', '.join(r['models'])}")


@pipelines.command("list")
@server_option
@json_option
def pipelines_list(server: str | None, as_json: bool) -> None:
    """Pipelines you may see: yours, public ones and the repository's."""
    with client_for(server) as c:
        rows = c.pipelines()
    if as_json:
        print_json(rows)
    else:
        print_table(rows, ("name", "visibility", "system", "updated_at"))


@pipelines.command("show")
@click.argument("name")
@click.option("--version", type=int, default=None, help="A version's document [newest].")
@server_option
@json_option
def pipelines_show(name: str, version: int | None, server: str | None, as_json: bool) -> None:
    """A pipeline and its document (JSON: the whole answer; else the document as YAML)."""
    with client_for(server) as c:
        p = c.pipeline(name, version)
    if as_json:
        print_json(p)
        return
    print_details(p, ("name", "version", "visibility", "owner_id", "created_by", "updated_at"))
    click.echo(yaml.safe_dump(p["document"], sort_keys=False).rstrip())


@pipelines.command("delete")
@click.argument("name")
@server_option
def pipelines_delete(name: str, server: str | None) -> None:
    """Delete pipeline NAME with its versions and deployment."""
    with client_for(server) as c:
        c.delete_pipeline(name)
    click.echo(f"deleted pipeline {name}")
